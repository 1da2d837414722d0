"""OpenCLIP backbones with zero-shot heads: tiny random models built from configs, never a download.

Two tiny architectures (a ViT and a ModifiedResNet) are registered from JSON configs written
here (``config:`` in the model entry -> ``open_clip.add_model_config``); CLIP's BPE vocabulary
ships in open_clip's wheel, so the tokenizer is offline too. Every hub call is patched to fail.
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import compat

compat.apply()
import open_clip  # noqa: E402

from pipeline.analysis.grad_norms import layer_grad_norms  # noqa: E402
from pipeline.data.prompts import prompts_for, render  # noqa: E402
from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint  # noqa: E402
from pipeline.methods import init_zeroshot  # noqa: E402
from pipeline.models.backbone import head_names, normalization, save_state  # noqa: E402
from pipeline.models.layers import freeze_bottom, layer_groups  # noqa: E402
from pipeline.models.openclip import (  # noqa: E402
    OpenCLIPClassifier,
    OpenCLIPConfigError,
    check_entry,
    create_clip,
    load_state_file,
    model_from_config,
    resolve_weights,
)
from pipeline.models.state_files import CheckpointError  # noqa: E402
from pipeline.models.zeroshot import save_head, zeroshot_head  # noqa: E402

TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
CONFIGS = {
    "pipeline-test-vit": {"embed_dim": 16, "text_cfg": TEXT, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                                           "head_width": 16, "patch_size": 8}},
    "pipeline-test-rn": {"embed_dim": 16, "text_cfg": TEXT,
                         "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}},
}
ARCHS = list(CONFIGS)
CLASSES = ["cat", "dog", "airplane", "ship"]


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to reach a model hub fails the test."""
    import huggingface_hub

    def refuse(*a, **k):
        raise AssertionError(f"download attempted: {a} {k}")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    assert __import__("os").environ.get("HF_HUB_OFFLINE") == "1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and two spin-waiting threads crawl on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory):
    """``{arch: (models.<name> entry with weights none, path of its saved random CLIP weights)}``."""
    root = tmp_path_factory.mktemp("openclip")
    out = {}
    for arch, cfg in CONFIGS.items():
        (root / f"{arch}.json").write_text(json.dumps(cfg))
        entry = {"open_clip": arch, "config": str(root / f"{arch}.json"), "weights": "none"}
        torch.manual_seed(0)
        weights = root / f"{arch}.safetensors"
        save_state(resolve_weights(entry, "tiny"), weights)   # what the backbone stage would write
        out[arch] = (entry, weights)
    return out


def images(arch: str, n: int = 6, seed: int = 0) -> torch.Tensor:
    size = CONFIGS[arch]["vision_cfg"]["image_size"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def zeroshot_model(entry, weights, tmp_path, classes=CLASSES, templates=None):
    """The zero-shot classifier as the pipeline builds it: backbone file + head file + init zeroshot."""
    templates = templates or prompts_for("cifar10", {})[1]
    head = zeroshot_head(entry, weights, classes, templates)
    save_head(head, tmp_path / "zeroshot_head.safetensors")
    model = model_from_config(entry, len(classes), weights)
    inputs = {"zeroshot_head": str(tmp_path / "zeroshot_head.safetensors")}
    init_zeroshot.init_head(model, inputs)
    return model.eval(), head, inputs


@pytest.mark.parametrize("arch", ARCHS)
def test_classifier_is_the_image_tower_with_normalised_features(cfgs, arch):
    entry, weights = cfgs[arch]
    clip = create_clip(entry, weights)
    model = model_from_config(entry, 5, weights).eval()
    visual = {f"visual.{k}" for k in clip.visual.state_dict()}
    assert set(model.state_dict()) == visual | {"head.weight", "head.bias"}
    assert not any(k.startswith(("transformer.", "token_embedding", "ln_final", "text_projection", "logit"))
                   for k in model.state_dict())
    assert head_names(model) == ("head.weight", "head.bias")
    assert normalization(model) == (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert model.num_classes == 5 and model.num_features == 16
    size = CONFIGS[arch]["vision_cfg"]["image_size"]
    assert model.pretrained_cfg["input_size"] == (3, size, size) and model.default_cfg is model.pretrained_cfg
    x = images(arch)
    with torch.no_grad():
        feats = model_from_config(entry, 0, weights).eval()(x)
        expected = clip.encode_image(x, normalize=True)
        assert torch.allclose(feats, expected, atol=1e-6)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(len(x)), atol=1e-6)
        assert torch.allclose(model(x), model.head(expected), atol=1e-5)


def test_head_rows_are_unit_text_embeddings_times_logit_scale(cfgs, tmp_path):
    entry, weights = cfgs["pipeline-test-vit"]
    names, templates = prompts_for("cifar10", {})
    head = zeroshot_head(entry, weights, names, templates)
    clip = create_clip(entry, weights)
    scale = clip.logit_scale.exp().item()
    assert head["weight"].shape == (10, 16) and head["weight"].dtype == torch.float32
    assert torch.equal(head["bias"], torch.zeros(10))
    assert torch.allclose(head["weight"].norm(dim=1), torch.full((10,), scale), rtol=1e-5)
    # The same rows computed here one class at a time (methods.md 1.8), independently of open_clip's helper.
    tokenizer = open_clip.get_tokenizer(entry["open_clip"])
    with torch.no_grad():
        for k, name in enumerate(names):
            e = clip.encode_text(tokenizer([render(t, name) for t in templates]))
            mean = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            assert torch.allclose(head["weight"][k], scale * mean / mean.norm(), atol=1e-5), name


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroshot_logits_are_clips_own(cfgs, arch, tmp_path):
    entry, weights = cfgs[arch]
    model, head, _ = zeroshot_model(entry, weights, tmp_path)
    clip = create_clip(entry, weights)
    tokenizer = open_clip.get_tokenizer(entry["open_clip"])
    templates = prompts_for("cifar10", {})[1]
    x = images(arch)
    with torch.no_grad():
        text = torch.stack([F.normalize(clip.encode_text(tokenizer([render(t, c) for t in templates])), dim=-1).mean(0)
                            for c in CLASSES])
        expected = clip.logit_scale.exp() * clip.encode_image(x, normalize=True) @ F.normalize(text, dim=-1).T
        assert torch.allclose(model(x), expected, atol=1e-4)


class FixedMap(nn.Module):
    """A stand-in image tower: the first ``dim`` pixel values are the (unnormalised) features."""

    def __init__(self, dim: int):
        super().__init__()
        self.output_dim, self.dim = dim, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :self.dim]


def test_zeroshot_accuracy_on_a_hand_made_case(cfgs, tmp_path):
    """Images whose features are, by construction, near their class's text direction are all classified right.

    The image tower is replaced by a fixed linear map (features = the first D pixels). Each image's
    feature is s * (u_k + delta * n): u_k = class k's averaged unit text embedding (computed here),
    s a random positive scale (normalisation must remove it), n a random unit vector and delta
    below half the smallest gap between classes, so by geometry the argmax must be k. Permuting
    the class names permutes the predictions: row k scores label k.
    """
    entry, weights = cfgs["pipeline-test-vit"]
    model, head, _ = zeroshot_model(entry, weights, tmp_path)
    rows = F.normalize(head["weight"], dim=-1)
    cos = rows @ rows.T
    gap = float((1 - cos[~torch.eye(len(CLASSES), dtype=torch.bool)]).min())
    assert gap > 1e-4, "the class texts do not separate"   # distinct texts give distinct rows
    delta = 0.5 * (gap / 2) ** 0.5
    model.visual = FixedMap(rows.shape[1])
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(len(CLASSES)).repeat_interleave(8)
    noise = F.normalize(torch.randn(len(labels), rows.shape[1], generator=gen), dim=-1)
    scale = 0.5 + 5 * torch.rand(len(labels), 1, generator=gen)
    feats = scale * (rows[labels] + delta * noise)
    x = torch.randn(len(labels), 3, 32, 32, generator=gen)
    x.view(len(labels), -1)[:, :rows.shape[1]] = feats
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(1) == labels).all()
    assert torch.allclose(logits, F.normalize(feats, dim=-1) @ head["weight"].T, atol=1e-4)
    perm = [2, 0, 3, 1]
    shuffled, _, _ = zeroshot_model(entry, weights, tmp_path, classes=[CLASSES[i] for i in perm])
    shuffled.visual = FixedMap(rows.shape[1])
    with torch.no_grad():
        pred = shuffled(x).argmax(1)
    assert [perm[int(p)] for p in pred] == labels.tolist()


def sgd_steps(model: nn.Module, arch: str, steps: int = 4, lr: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        seed = int(torch.randint(0, 10**6, (1,), generator=gen))
        x, y = images(arch, 8, seed), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_wise_ft_from_zeroshot_interpolates_every_key(cfgs, arch, tmp_path):
    entry, weights = cfgs[arch]
    zs, head, inputs = zeroshot_model(entry, weights, tmp_path)
    ft = copy.deepcopy(zs)
    sgd_steps(ft, arch)
    assert set(ft.state_dict()) == set(zs.state_dict())   # fine-tuned from the zero-shot head: same keys
    theta0, keep = pretrained_endpoint(load_state_file(weights), ft.state_dict(), head_names(ft),
                                       init_zeroshot.pretrained_head(inputs))
    assert keep == frozenset() and set(theta0) == set(ft.state_dict())
    x = images(arch, seed=7)
    fresh = model_from_config(entry, len(CLASSES), None).eval()
    with torch.no_grad():
        for alpha, reference in ((0.0, zs), (1.0, ft)):
            fresh.load_state_dict(interpolate(theta0, ft.state_dict(), alpha))
            assert torch.equal(fresh(x), reference(x)), f"alpha={alpha}"
        mid = interpolate(theta0, ft.state_dict(), 0.5)
    assert torch.allclose(mid["head.weight"], (head["weight"] + ft.state_dict()["head.weight"]) / 2, atol=1e-6)
    moved = [k for k, v in ft.state_dict().items() if v.is_floating_point() and not torch.equal(v, theta0[k])]
    assert all(not torch.equal(mid[k], ft.state_dict()[k]) for k in moved) and "head.weight" in moved


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_embed_moves_everything_but_the_embedding(cfgs, arch, tmp_path):
    entry, weights = cfgs[arch]
    model, _, _ = zeroshot_model(entry, weights, tmp_path)
    report = freeze_bottom(model, 2)
    embed = ["conv1", "ln_pre"] if arch.endswith("vit") else ["conv1", "bn1"]
    assert report.frozen_groups == embed
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.split(".")[1] in embed}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd_steps(model, arch)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
        else:
            assert not torch.equal(p, before[n]), f"trainable {n} did not move"


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_groups_layer_decay_and_grad_norms(cfgs, arch):
    from timm.optim import param_groups_layer_decay

    entry, weights = cfgs[arch]
    model = model_from_config(entry, 4, weights)
    groups = layer_groups(model)
    names = [n for _, members in groups for n in members]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert groups[-1] == ("head", ["head.weight", "head.bias"])
    expected = (["conv1", "ln_pre", "tokens", "resblocks.0", "resblocks.1", "ln_post", "head"] if arch.endswith("vit")
                else ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4",
                      "attnpool", "head"])
    assert [g for g, _ in groups] == expected
    scales = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, 0.0, layer_decay=0.5) for p in g["params"]}
    assert scales[id(model.head.weight)] == 1.0 and scales[id(model.visual.conv1.weight)] == min(scales.values()) < 1
    table = layer_grad_norms(model, images(arch, 4), torch.tensor([0, 1, 2, 3]))
    assert list(table["group"]) == expected and (table["grad_norm"].fillna(1) > 0).all()
    assert model.no_weight_decay() == ({"visual.class_embedding", "visual.positional_embedding"}
                                       if arch.endswith("vit") else set())


def test_unknown_model_name_is_one_line_with_close_names():
    entry = {"open_clip": "ViT-B-61", "weights": "none"}
    for call in (lambda: check_entry("clip_b16", entry), lambda: model_from_config(entry, 3, None, name="clip_b16")):
        with pytest.raises(OpenCLIPConfigError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "models.clip_b16.open_clip" in msg and "'ViT-B-61'" in msg and "ViT-B-16" in msg


def test_missing_weights_file_and_unknown_tag_are_one_line(cfgs, tmp_path):
    entry, _ = cfgs["pipeline-test-vit"]
    missing = {**entry, "weights": str(tmp_path / "nope.pt")}
    for call in (lambda: check_entry("clip", missing), lambda: resolve_weights(missing, "clip"),
                 lambda: model_from_config(entry, 3, tmp_path / "nope.pt", name="clip")):
        with pytest.raises(OpenCLIPConfigError) as err:
            call()
        assert "\n" not in str(err.value) and "models.clip.weights" in str(err.value) and "nope.pt" in str(err.value)
    with pytest.raises(OpenCLIPConfigError, match=r"models.clip.weights: OpenCLIP has no pretrained tag 'nosuch'"):
        check_entry("clip", {"open_clip": "ViT-B-16", "weights": "hub:nosuch"})
    check_entry("clip", {"open_clip": "ViT-B-16", "weights": "hub:openai"})   # a known tag: no error, no download


def test_local_checkpoints_load_as_state_dicts_only(cfgs, tmp_path):
    entry, weights = cfgs["pipeline-test-vit"]
    state = load_state_file(weights)
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    local = resolve_weights({**entry, "weights": str(wrapped)}, "clip")
    assert set(local) == set(state) and all(torch.equal(local[k], state[k]) for k in state)
    a = model_from_config(entry, 3, wrapped).state_dict()
    b = model_from_config(entry, 3, weights).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("visual."))

    scripted = tmp_path / "openai.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_state_file(scripted, "models.clip.weights")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": FixedMap(3)}, pickled)   # a pickle that needs code to load
    with pytest.raises(CheckpointError, match=r"^models.clip.weights: .*pickled.pt: holds pickled objects "
                                              r"\(\S*FixedMap\), which are never loaded") as err:
        load_state_file(pickled, "models.clip.weights")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    wrong = {**entry, "open_clip": "pipeline-test-rn", "config": entry["config"].replace("vit", "rn")}
    with pytest.raises(CheckpointError, match="does not fit OpenCLIP pipeline-test-rn"):
        model_from_config(wrong, 3, weights)


def test_zeroshot_init_needs_an_openclip_model(tmp_path):
    import timm

    save_head({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, tmp_path / "h.safetensors")
    inputs = {"zeroshot_head": str(tmp_path / "h.safetensors")}
    with pytest.raises(ValueError, match="init zeroshot needs an OpenCLIP model"):
        init_zeroshot.init_head(timm.create_model("test_vit", num_classes=3), inputs)


def test_classifier_type_is_the_layer_family(cfgs):
    entry, _ = cfgs["pipeline-test-vit"]
    assert isinstance(model_from_config(entry, 2, None), OpenCLIPClassifier)


def test_architecture_and_normalisation_follow_the_pretrained_tag():
    from pipeline.models.openclip import _arch_kwargs, normalization_of

    # OpenAI's tags were trained with QuickGELU, which the plain ViT-B-16 config lacks.
    assert _arch_kwargs({"open_clip": "ViT-B-16", "weights": "hub:openai"}, "ViT-B-16") == {"force_quick_gelu": True}
    assert _arch_kwargs({"open_clip": "ViT-B-16", "weights": "/x.pt", "model_kwargs": {"quick_gelu": True}},
                        "ViT-B-16") == {"quick_gelu": True}
    siglip = {"open_clip": "ViT-B-16-SigLIP", "weights": "hub:webli"}
    assert normalization_of(siglip, "ViT-B-16-SigLIP") == ((0.5,) * 3, (0.5,) * 3)
    assert normalization_of({"open_clip": "ViT-B-16", "weights": "none"}, "ViT-B-16") == (
        open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert normalization_of({**siglip, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}, "ViT-B-16-SigLIP") == (
        (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))


def test_config_file_must_carry_the_model_name(cfgs):
    entry, _ = cfgs["pipeline-test-vit"]
    with pytest.raises(OpenCLIPConfigError, match=r"^models.tiny.config: .* registers OpenCLIP model 'pipeline-test-v"):
        check_entry("tiny", {**entry, "open_clip": "other-name"})
