"""Freeze-embed layer groups (pipeline.models.layers) and per-layer gradient norms (pipeline.analysis.grad_norms)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import compat

compat.apply()  # before timm imports torchvision
import timm  # noqa: E402

from pipeline.analysis.grad_norms import layer_grad_norms  # noqa: E402
from pipeline.models.layers import FREEZE_ALIASES, freeze_bottom, layer_groups, resolve_freeze  # noqa: E402
from pipeline.reporting.figures import save_figure  # noqa: E402
from pipeline.reporting.layer_figures import grad_norms_figure  # noqa: E402
from pipeline.training.loop import set_bn_mode  # noqa: E402

SIZE = 32  # tiny inputs keep each forward/backward in the milliseconds
FAMILIES = ["test_vit", "test_convnext", "test_resnet", "test_efficientnet"]


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    kw = {"img_size": SIZE} if "vit" in name else {}
    if "convnext" in name:
        # Layer scale starts at 1e-6: a few SGD steps would then move the blocks' norms by
        # less than float32 resolution, and "did not move" would be rounding, not freezing.
        kw["ls_init_value"] = 1.0
    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


def numel(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def embed_modules(name: str, model: nn.Module) -> list[nn.Module]:
    """The modules freeze-embed (k=2) must freeze, named by hand from methods.md §1.4."""
    return {
        "test_vit": lambda m: [m.patch_embed, m.norm_pre],
        "test_convnext": lambda m: [m.stem, m.stages[0]],
        "test_resnet": lambda m: [m.conv1, m.bn1, m.layer1],
        "test_efficientnet": lambda m: [m.conv_stem, m.bn1, m.blocks[0]],
    }[name](model)


def test_tiny_models_exist():
    assert set(FAMILIES) <= set(timm.list_models("test_*"))


@pytest.mark.parametrize("name", FAMILIES)
def test_every_param_in_exactly_one_group(name):
    model = make(name)
    groups = layer_groups(model)
    names = [n for _, members in groups for n in members]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    # Groups run input -> output: the last one is the classifier.
    classifier = ("head", "fc", "classifier")
    assert set(groups[-1][1]) == {n for n, _ in model.named_parameters()
                                  if n.split(".")[0] in classifier and ".norm." not in n}


@pytest.mark.parametrize("name", FAMILIES)
def test_freeze_embed_sgd_moves_only_trainable(name):
    model = make(name)
    report = freeze_bottom(model, 2)
    frozen = {n for _, members in layer_groups(model)[:2] for n in members}
    assert frozen and {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    set_bn_mode(model, "eval")
    # Several steps: zero-initialised pieces (ResNet's last-BN gammas) only start receiving
    # gradient for the layers behind them after the first update.
    for _ in range(4):
        x = torch.randn(4, 3, SIZE, SIZE, generator=gen)
        y = torch.randint(0, 3, (4,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), f"{name}: frozen {n} changed"
            assert p.grad is None
        else:
            assert not torch.equal(p, before[n]), f"{name}: trainable {n} did not move"
    assert report.frozen_params == numel(*embed_modules(name, model))


def test_vit_tokens_trainable():
    # That they also move under SGD is checked by test_freeze_embed_sgd_moves_only_trainable[test_vit].
    model = make("test_vit")
    freeze_bottom(model, 2)
    assert model.pos_embed.requires_grad and model.cls_token.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_frozen_fraction_hand_counted(name):
    model = make(name)
    total = numel(model)
    r2 = freeze_bottom(model, 2)
    assert (r2.k, r2.total_params, r2.frozen_params) == (2, total, numel(*embed_modules(name, model)))
    assert r2.fraction == pytest.approx(r2.frozen_params / total)
    assert len(r2.frozen_groups) == 2
    first = {"test_vit": lambda m: [m.patch_embed], "test_convnext": lambda m: [m.stem],
             "test_resnet": lambda m: [m.conv1, m.bn1], "test_efficientnet": lambda m: [m.conv_stem, m.bn1]}
    r1 = freeze_bottom(make(name), 1)
    assert r1.frozen_params == numel(*first[name](model)) > 0
    assert r1.frozen_groups == r2.frozen_groups[:1]
    if name == "test_vit":
        # Plain ViT: norm_pre is Identity, so k=1 and k=2 freeze the same parameters.
        assert r1.frozen_params == r2.frozen_params and r2.frozen_groups == ["patch_embed", "norm_pre"]
    else:
        assert r1.frozen_params < r2.frozen_params
    r0 = freeze_bottom(make(name), 0)
    assert r0.frozen_params == 0 and r0.fraction == 0.0 and r0.frozen_groups == []


def test_k1_leaves_second_group_trainable():
    model = make("test_convnext")
    freeze_bottom(model, 1)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.stages[0].parameters())


def test_clip_vit_norm_pre_frozen_by_embed():
    with torch.device("meta"):  # no memory, no init cost: only names and shapes are needed
        model = timm.create_model("vit_base_patch16_clip_224", pretrained=False)
    assert isinstance(model.norm_pre, nn.LayerNorm)
    groups = layer_groups(model)
    assert [g for g, _ in groups[:3]] == ["patch_embed", "norm_pre", "tokens"]
    assert set(groups[1][1]) == {"norm_pre.weight", "norm_pre.bias"}
    report = freeze_bottom(model, 2)
    assert not model.norm_pre.weight.requires_grad and not model.patch_embed.proj.weight.requires_grad
    assert model.pos_embed.requires_grad and model.cls_token.requires_grad
    assert report.frozen_params == numel(model.patch_embed, model.norm_pre)


def test_k_out_of_range():
    model = make("test_efficientnet")
    n = len(layer_groups(model))
    freeze_bottom(model, n - 1)  # everything but the classifier: allowed
    assert all(p.requires_grad for p in model.classifier.parameters())
    for k in (n, n + 3, -1):
        with pytest.raises(ValueError, match="head stays trainable"):
            freeze_bottom(make("test_efficientnet"), k)


def test_resolve_freeze():
    assert FREEZE_ALIASES == {"none": 0, "patch_embed": 1, "embed": 2}
    specs = ("none", "patch_embed", "embed", "Embed", 0, 2, 5, "3")
    assert [resolve_freeze(s) for s in specs] == [0, 1, 2, 2, 0, 2, 5, 3]
    for bad in ("bogus", "", -1, "-1", True, 2.0, None):
        with pytest.raises(ValueError):
            resolve_freeze(bad)


def test_byobnet_stem_layers_and_attention_pool_head():
    """timm's CLIP ResNet-50 port (ByobNet): each stem conv and norm is a layer, as in the freeze-embed code."""
    model = timm.create_model("resnet50_clip", pretrained=False, num_classes=3)
    groups = layer_groups(model)
    stem = ["conv1.conv", "conv1.bn", "conv2.conv", "conv2.bn", "conv3.conv", "conv3.bn"]
    assert [g for g, _ in groups[:6]] == stem
    assert [g for g, _ in groups[-2:]] == ["attnpool", "head"]
    assert groups[-1][1] == ["head.proj.weight", "head.proj.bias"]
    report = freeze_bottom(model, 2)
    assert report.frozen_params == 3 * 3 * 3 * 32 + 2 * 32   # 3x3 conv 3->32 (no bias) + BatchNorm(32)


def test_densenet_blocks_own_their_transitions():
    """DenseNet-121 (the Li et al. 2020 config): stem, four dense blocks each with the transition after it, norm5."""
    model = timm.create_model("densenet121", pretrained=False, num_classes=3)
    groups = layer_groups(model)
    assert [g for g, _ in groups] == ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4", "norm",
                                      "classifier"]
    assert all(n.startswith(("features.denseblock1.", "features.transition1.")) for n in groups[1][1])
    assert any(n.startswith("features.transition1.") for n in groups[1][1])
    report = freeze_bottom(model, 1)
    assert report.frozen_params == 7 * 7 * 3 * 64 + 2 * 64   # 7x7 conv 3->64 (no bias) + BatchNorm(64)


def test_unsupported_class():
    for model in (nn.Sequential(nn.Linear(2, 2)), timm.create_model("mobilenetv3_small_050", pretrained=False)):
        with pytest.raises(ValueError, match=type(model).__name__) as e:
            layer_groups(model)
        assert "VisionTransformer" in str(e.value) and "EfficientNet" in str(e.value)
        with pytest.raises(ValueError):
            freeze_bottom(model, 2)


def test_unassigned_param_named():
    model = make("test_resnet")
    model.extra_scale = nn.Parameter(torch.ones(1))
    with pytest.raises(AssertionError, match="extra_scale"):
        layer_groups(model)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit"])
def test_layer_grad_norms(name):
    model = make(name)
    freeze_bottom(model, 2)  # frozen groups still get a gradient norm
    model.train()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, SIZE, SIZE, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    state = copy.deepcopy(model.state_dict())  # BN running stats included
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    df = layer_grad_norms(model, x, y, embed_k=2)

    groups = layer_groups(model)
    assert list(df["group"]) == [g for g, _ in groups] and list(df["index"]) == list(range(len(groups)))
    assert list(df["embed"]) == [i < 2 for i in range(len(groups))]
    assert df["n_params"].sum() == numel(model)
    # Independent total: plain backward on a copy, BN in eval mode.
    ref = copy.deepcopy(model).eval().requires_grad_(True)
    F.cross_entropy(ref(x), y).backward()
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in ref.parameters() if p.grad is not None))
    assert math.sqrt((df["grad_norm"] ** 2).sum()) == pytest.approx(total, rel=1e-5)
    assert (df.loc[df["n_params"] > 0, "grad_norm"] > 0).all()
    ne = df[df["n_params"] > 0]
    assert ne["grad_norm_per_param"].tolist() == pytest.approx((ne["grad_norm"] / ne["n_params"] ** 0.5).tolist())
    assert math.sqrt((df["param_norm"] ** 2).sum()) == pytest.approx(
        math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())), rel=1e-6)
    # The model is left as it was: weights and buffers, grads, flags, train mode.
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(m.training for m in model.modules())
    if name == "test_vit":
        assert math.isnan(df.loc[df["group"] == "norm_pre", "grad_norm_per_param"].item())


def test_grad_norms_figure(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, SIZE, SIZE, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    frames = []
    for name in ("test_vit", "test_efficientnet"):
        df = layer_grad_norms(make(name), x, y)
        frames.append(df.assign(model=name))
    import pandas as pd

    both = grad_norms_figure(pd.concat(frames, ignore_index=True))
    assert len(both.axes) == 2 and [ax.get_title() for ax in both.axes] == ["model test_vit", "model test_efficientnet"]
    path, png = tmp_path / "sub" / "grad_norms.pdf", tmp_path / "grad_norms.png"
    save_figure(both, path, png)
    assert path.stat().st_size > 0 and png.stat().st_size > 0
    single = grad_norms_figure(frames[1].drop(columns="model"))
    assert len(single.axes) == 1
    # embedding groups are red, the rest blue; empty groups (ViT norm_pre) draw no bar
    vit = both.axes[0]
    heights = [bar.get_height() for bar in vit.patches]
    assert len(heights) == len(frames[0]) and sum(h > 0 for h in heights) == int((frames[0]["n_params"] > 0).sum())
