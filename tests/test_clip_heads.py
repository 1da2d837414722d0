"""CLIP's image projection kept as a trainable layer (``head: project``) and unnormalised OpenCLIP features.

transfer_learning's ``ClipModel`` classifies ``encode_image`` features, CLIP's projection included and not
L2-normalised, with a new ``nn.Linear(output_dim, K)``
(AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/models/clip_model.py:180-183, 197-198). What
is compared here, on tiny random CLIP models built by open_clip (GELU, no download):

* ViT: open_clip's state dict, converted by timm's own ``_convert_openai_clip`` (the layout of timm's
  ``.openai`` checkpoints), loaded by the pipeline's ``create_model`` with ``head="project"`` under the
  name ``vit_base_patch16_clip_224.openai`` (shrunk by model kwargs): the projection is open_clip's
  ``visual.proj`` bit for bit and the features (``num_classes=0``) equal ``encode_image`` to float rounding.
* ResNet: a tiny timm ``ByobNet`` of ``resnet50_clip``'s configuration (built directly: a registered name
  cannot be shrunk) loaded through timm's ``checkpoint_filter_fn`` from open_clip's ModifiedResNet, then
  :func:`pipeline.models.heads.keep_projection`: projection ``attnpool.c_proj`` bit for bit, features equal.
* OpenCLIP with ``normalize_features: false``: the classifier's features are ``encode_image``'s.

Then every part that touches the head: LP head loading, WiSE-FT's endpoints, layer groups and
freeze-embed, SPD's head group, the params checks, and the stages end to end on a tiny timm ViT.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline import compat
from pipeline.config import ParamsError, validate
from pipeline.config.settings import default_settings
from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint
from pipeline.methods.assemble import assemble
from pipeline.methods.init_lp import init_head as init_lp
from pipeline.models.backbone import create_model, head_names, load_state, model_from_config, save_state
from pipeline.models.heads import HeadFormError, keep_projection
from pipeline.models.layers import freeze_bottom, layer_groups

compat.apply()
import open_clip  # noqa: E402
import timm  # noqa: E402
from timm.models.byobnet import ByoBlockCfg, ByobNet, checkpoint_filter_fn, model_cfgs  # noqa: E402
from timm.models.vision_transformer import _convert_openai_clip  # noqa: E402

TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VIT = {"embed_dim": 16, "text_cfg": TEXT,
       "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}}
RN = {"embed_dim": 16, "text_cfg": TEXT, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8,
                                                       "head_width": 64}}
TIMM_VIT = "vit_base_patch16_clip_224.openai"
# timm's ViT of the same shape; num_classes: the projection's width (head: project reads it as that)
VIT_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 16}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Tiny random OpenCLIP models (eval mode) and the ViT's weights in timm's layout, as a file."""
    root = tmp_path_factory.mktemp("clip_heads")
    out = {}
    for name, cfg in (("pipeline-heads-vit", VIT), ("pipeline-heads-rn", RN)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(root / f"{name}.json")
        torch.manual_seed(0)
        clip = open_clip.create_model(name, pretrained=None).eval()
        with torch.no_grad():   # BatchNorm statistics that are not the identity
            for m in clip.visual.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
        out[name.rsplit("-", 1)[1]] = clip
    ref = timm.create_model(TIMM_VIT, pretrained=False, **VIT_KW)
    save_state(_convert_openai_clip(out["vit"].state_dict(), ref), root / "vit.safetensors")
    out["vit_weights"] = root / "vit.safetensors"
    out["root"] = root
    return out


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def vit(clips, num_classes: int, head: str = "project") -> torch.nn.Module:
    kw = dict(VIT_KW) if head == "project" else {k: v for k, v in VIT_KW.items() if k != "num_classes"}
    return create_model(TIMM_VIT, num_classes, clips["vit_weights"], head, **kw).eval()


def test_timm_clip_vit_keeps_the_projection_and_its_features_are_encode_image(clips):
    clip = clips["vit"]
    model = vit(clips, 10)
    assert torch.equal(model.head.proj.weight, clip.visual.proj.T)   # bit for bit
    assert torch.equal(model.head.proj.bias, torch.zeros(16))        # timm's conversion: a zero bias
    assert model.head.fc.weight.shape == (10, 16) and head_names(model) == ("head.fc.weight", "head.fc.bias")
    x = images()
    with torch.no_grad():
        features = vit(clips, 0)(x)
        want = clip.encode_image(x)
    assert features.shape == (3, 16)
    torch.testing.assert_close(features, want, atol=2e-5, rtol=1e-5)   # timm vs open_clip attention kernels
    with torch.no_grad():   # head: replace drops the projection: 32-d pre-projection features
        assert vit(clips, 0, head="replace")(x).shape == (3, 32)


def test_timm_clip_resnet_keeps_attnpool_c_proj_and_its_features_are_encode_image(clips):
    clip = clips["rn"]
    stages = tuple(ByoBlockCfg(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in ((32, 1), (64, 2), (128, 2),
                                                                                   (256, 2)))
    cfg = dataclasses.replace(model_cfgs["resnet50_clip"], blocks=stages, stem_chs=(4, 4, 8))
    model = ByobNet(cfg=cfg, num_classes=16, img_size=32).eval()
    model.load_state_dict(checkpoint_filter_fn(clip.state_dict(), model), strict=True)
    model.pretrained_cfg = model.default_cfg = {"architecture": "resnet50_clip", "classifier": "head.proj"}
    features = keep_projection(model, 0).eval()
    assert torch.equal(features.head.proj.proj.weight, clip.visual.attnpool.c_proj.weight)
    assert torch.equal(features.head.proj.proj.bias, clip.visual.attnpool.c_proj.bias)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(features(x), clip.encode_image(x), atol=1e-5, rtol=1e-5)
    groups = [g for g, _ in layer_groups(features)]
    assert groups[-3:] == ["attnpool", "proj", "head"]


def test_openclip_features_without_normalisation_are_encode_image(clips, tmp_path):
    from pipeline.models.openclip import resolve_weights

    entry = {"open_clip": "pipeline-heads-vit", "config": str(clips["root"] / "pipeline-heads-vit.json"),
             "weights": "none"}
    torch.manual_seed(1)
    weights = tmp_path / "clip.safetensors"
    save_state(resolve_weights(entry, "tiny"), weights)
    clip = open_clip.create_model("pipeline-heads-vit", pretrained=None)
    clip.load_state_dict(load_state(weights))
    x = images()
    raw = model_from_config({**entry, "normalize_features": False}, 0, weights).eval()
    unit = model_from_config(entry, 0, weights).eval()
    with torch.no_grad():
        want = clip.eval().encode_image(x)
        torch.testing.assert_close(raw(x), want)
        torch.testing.assert_close(unit(x), F.normalize(want, dim=-1))
    assert raw(x).norm(dim=-1).sub(1).abs().max() > 0.1   # the test can tell them apart
    from pipeline.methods import init_zeroshot

    model = model_from_config({**entry, "normalize_features": False}, 4, weights)
    with pytest.raises(ValueError, match="init zeroshot needs normalize_features: true"):
        init_zeroshot.init_head(model, {"zeroshot_head": "unused"})


def test_lp_head_wise_ft_and_groups_with_the_projection(clips, tmp_path):
    model = vit(clips, 4)
    x = images()
    with torch.no_grad():
        f = vit(clips, 0)(x)
    head = {"weight": torch.randn(4, 16), "bias": torch.randn(4)}   # what linear_probe fits on those features
    save_state(head, tmp_path / "lp.safetensors")
    init_lp(model, {"lp_head": str(tmp_path / "lp.safetensors")})
    with torch.no_grad():
        torch.testing.assert_close(model(x), f @ head["weight"].T + head["bias"], atol=1e-5, rtol=1e-5)

    # WiSE-FT: theta_0 is the pretrained model in the run's form; the projection is interpolated, the
    # new layer is the head (the LP head for LP-FT, kept from the fine-tune for a fresh head).
    finetuned = {k: v + 0.01 for k, v in model.state_dict().items()}
    pretrained = vit(clips, 4).state_dict()
    theta0, keep = pretrained_endpoint(pretrained, finetuned, head_names(model), head)
    assert not keep and torch.equal(theta0["head.proj.weight"], clips["vit"].visual.proj.T)
    half = interpolate(theta0, finetuned, 0.5)
    torch.testing.assert_close(half["head.proj.weight"], clips["vit"].visual.proj.T + 0.005)
    torch.testing.assert_close(half["head.fc.weight"], (head["weight"] + finetuned["head.fc.weight"]) / 2)
    _, keep = pretrained_endpoint(pretrained, finetuned, head_names(model), None)
    assert keep == {"head.fc.weight", "head.fc.bias"}

    groups = dict(layer_groups(model))
    assert list(groups)[-2:] == ["proj", "head"]
    assert groups["proj"] == ["head.proj.weight", "head.proj.bias"] and groups["head"] == ["head.fc.weight",
                                                                                           "head.fc.bias"]
    report = freeze_bottom(model, 2)
    assert report.frozen_groups == ["patch_embed", "norm_pre"] and model.head.proj.weight.requires_grad
    spd = assemble(vit(clips, 4), {**default_settings(), "optimizer": "spd", "lr": 1e-3, "spd_lambda": 0.5},
                   head_names(model))
    lams = {n: g["lam"] for g in spd.optimizer.param_groups for n in g["param_names"]}
    assert [n for n, lam in lams.items() if lam == 0.0] == ["head.fc.weight", "head.fc.bias"]
    assert lams["head.proj.weight"] == 0.5   # the projection is backbone for SPD


def test_project_needs_a_linear_classifier():
    with pytest.raises(HeadFormError, match="classifier 'head.fc' is Conv2d, not a linear layer"):
        create_model("resnetv2_50x1_bit", 3, None, "project")
    with pytest.raises(HeadFormError, match="model_kwargs.num_classes .* head: project only"):
        create_model("test_vit", 3, None, "replace", num_classes=7)


def test_head_keys_are_checked(tmp_path):
    from conftest import REPO

    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["models"]["lite0"]["head"] = "keep"
    with pytest.raises(ParamsError, match=r"models\.lite0\.head: 'keep' is not one of replace, project"):
        validate(cfg)
    cfg["models"]["lite0"]["head"] = "project"
    validate(cfg)
    cfg["models"]["lite0"]["normalize_features"] = False
    with pytest.raises(ParamsError, match=r"models\.lite0\.normalize_features: only OpenCLIP models"):
        validate(cfg)
    cfg["models"]["lite0"] = {"open_clip": "ViT-B-16", "weights": "none", "head": "project"}
    with pytest.raises(ParamsError, match=r"models\.lite0\.head: only timm models take it"):
        validate(cfg)
    cfg["models"]["lite0"] = {"open_clip": "ViT-B-16", "weights": "none", "normalize_features": False}
    cfg["methods"]["lpft"]["init"] = "zeroshot"
    with pytest.raises(ParamsError, match=r"models\.lite0\.normalize_features: false, but methods\.lpft starts "
                                          "from the zero-shot head"):
        validate(cfg)


def test_project_form_through_the_stages(tiny_workdir):
    """features (the projection's outputs) -> linear_probe -> LP-FT and FT with the projection -> evaluate
    -> WiSE-FT, on a tiny timm ViT whose 1000-class ImageNet classifier is kept as the projection."""
    from pipeline.stages.backbone import main as backbone
    from pipeline.stages.evaluate import main as evaluate
    from pipeline.stages.features import main as features
    from pipeline.stages.finetune import main as finetune
    from pipeline.stages.linear_probe import main as linear_probe
    from pipeline.stages.prepare_data import main as prepare
    from pipeline.stages.wise_ft import main as wise_ft

    cfg = yaml.safe_load((tiny_workdir / "params.yaml").read_text())
    cfg["models"]["tiny"] = {"timm_name": "test_vit", "weights": "none", "head": "project",
                             "model_kwargs": {"img_size": 32}}
    cfg["experiment"]["seeds"] = [0]
    (tiny_workdir / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    pair = ["--dataset", "digits", "--model", "tiny"]
    prepare(["--dataset", "digits"])
    backbone(["--model", "tiny"])
    features(pair)
    linear_probe(pair)
    lp = load_state("results/digits/tiny/lp/head.safetensors")
    assert lp["weight"].shape == (10, 1000)   # fit on the kept classifier's 1000 outputs
    from pipeline.config import load_params
    from pipeline.config.settings import hp_names

    for method in ("lpft", "ft_adamw"):
        hp = hp_names(load_params("params.yaml"), method, "digits")[0]
        run = [*pair, "--method", method, "--hp", hp, "--seed", "0"]
        assert finetune(run) == 0 and evaluate(run) == 0 and wise_ft(run) == 0
        state = load_state(f"results/digits/tiny/{method}/{hp}/seed0/model.safetensors")
        assert state["head.proj.weight"].shape == (1000, 64) and state["head.fc.weight"].shape == (10, 1000)
    start = model_from_config(cfg["models"]["tiny"], 10, "data/weights/tiny.safetensors").state_dict()
    assert torch.equal(start["head.proj.weight"], load_state("data/weights/tiny.safetensors")["head.weight"])


@pytest.mark.parametrize("size", ["base_patch16", "large_patch14"])
def test_openai_clip_vits_have_a_quickgelu_tag_on_the_same_checkpoint(size):
    """OpenAI's CLIP ViTs use QuickGELU (AnanyaKumar/transfer_learning@13c3e2b:CLIP/clip/model.py:166-181); timm's
    ``vit_*_clip_224.openai`` is GELU, with the note to use the quickgelu variant (timm 1.0.31:
    timm/models/vision_transformer.py:2599-2602), whose ``.openai`` tag timm generates from that note, pointing
    at the same hub checkpoint (timm/models/vision_transformer.py:3334-3340)."""
    gelu = timm.models.get_pretrained_cfg(f"vit_{size}_clip_224.openai")
    quick = timm.models.get_pretrained_cfg(f"vit_{size}_clip_quickgelu_224.openai")
    assert quick.hf_hub_id == gelu.hf_hub_id == f"timm/vit_{size}_clip_224.openai"
    assert quick.num_classes == gelu.num_classes
    with torch.device("meta"):
        model = timm.create_model(f"vit_{size}_clip_quickgelu_224.openai", pretrained=False, depth=1)
        plain = timm.create_model(f"vit_{size}_clip_224.openai", pretrained=False, depth=1)
    assert type(model.blocks[0].mlp.act).__name__ == "QuickGELU" and type(plain.blocks[0].mlp.act).__name__ == "GELU"
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]


def test_preflight_names_the_head_key():
    from pipeline.tools.preflight import _meta_model

    entry = {"timm_name": "resnetv2_50x1_bit.goog_in21k", "weights": "none", "head": "project"}
    with pytest.raises(ParamsError, match=r"models\.bit\.head: head: project keeps the pretrained classifier"), \
            torch.device("meta"):
        _meta_model("bit", entry, "params.yaml")
