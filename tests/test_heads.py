"""A linear-probe head loads into every classifier form timm uses, and WiSE-FT and soups handle each.

The forms: a linear layer (ViT), a 1x1 convolution (BiT / ResNetV2, the LP-FT bug: a [K, D] head
did not fit a [K, D, 1, 1] classifier), and a head behind a pre-logits layer (ConvNeXt with
``head_hidden_size``: the probe is fit on the pre-logits output, which is what ``num_classes=0`` gives).
"""
import pytest
import torch

from pipeline import compat
from pipeline.ensembling.interpolate import interpolate, pretrained_endpoint
from pipeline.ensembling.soup import uniform_soup
from pipeline.methods.init_lp import init_head, pretrained_head
from pipeline.models.backbone import head_names, save_state

compat.apply()
import timm  # noqa: E402

K = 3
FORMS = {
    "linear": ("test_vit", {"img_size": 32}),
    "conv1x1": ("resnetv2_50x1_bit", {}),
    "pre_logits": ("test_convnext", {"head_hidden_size": 24}),
}


def build(form: str, num_classes: int = K) -> torch.nn.Module:
    name, kw = FORMS[form]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw).eval()


@pytest.mark.parametrize("form", list(FORMS))
def test_lp_head_loads_and_interpolates(form, tmp_path):
    model = build(form)
    w_name, b_name = head_names(model)
    features = build(form, num_classes=0)
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k not in (w_name, b_name)})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = features(x)
    head = {"weight": torch.randn(K, f.shape[1]), "bias": torch.randn(K)}   # what linear_probe saves
    path = tmp_path / "head.safetensors"
    save_state(head, path)
    init_head(model, {"lp_head": str(path)})
    assert model.state_dict()[w_name].shape != head["weight"].shape or form != "conv1x1"
    with torch.no_grad():
        torch.testing.assert_close(model(x), f @ head["weight"].T + head["bias"], atol=1e-4, rtol=1e-4)

    # WiSE-FT: theta_0 carries the LP head in the classifier's own form; alpha = 0 is the LP model
    finetuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    pretrained = features.state_dict()
    lp = pretrained_head({"lp_head": str(path)})
    theta0, keep = pretrained_endpoint(pretrained, finetuned, (w_name, b_name), lp)
    assert not keep and theta0[w_name].shape == finetuned[w_name].shape
    model.load_state_dict(interpolate(theta0, finetuned, 0.0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), f @ head["weight"].T + head["bias"], atol=1e-4, rtol=1e-4)
    half = interpolate(theta0, finetuned, 0.5)
    torch.testing.assert_close(half[w_name], (theta0[w_name] + finetuned[w_name]) / 2)

    # soups: ingredients with this head average key by key
    soup = uniform_soup([finetuned, {k: v - 0.01 if v.is_floating_point() else v for k, v in finetuned.items()}])
    assert soup.keys() == finetuned.keys()
    torch.testing.assert_close(soup[w_name], finetuned[w_name] - 0.005)


def test_a_head_of_another_size_is_refused(tmp_path):
    model = build("conv1x1")
    save_state({"weight": torch.zeros(K, 7), "bias": torch.zeros(K)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"does not fit classifier \(3, 2048, 1, 1\)"):
        init_head(model, {"lp_head": str(tmp_path / "bad.safetensors")})


@pytest.mark.parametrize("form", ["linear", "conv1x1"])
def test_linear_default_head_is_nn_linears_init_under_the_same_seed(form):
    """transfer_learning's new head is ``nn.Linear(output_dim, K)`` built after the run's seed
    (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/models/clip_model.py:180-183,
    baseline_train.py:216, 831-834): PyTorch's default init, drawn from the global generator."""
    from pipeline.methods import init_linear

    model = build(form)
    w_name, b_name = head_names(model)
    weight = model.state_dict()[w_name]
    d = weight[0].numel()
    torch.manual_seed(7)
    init_linear.init_head(model, {})
    torch.manual_seed(7)
    ref = torch.nn.Linear(d, K)
    assert torch.equal(model.state_dict()[w_name].reshape(K, d), ref.weight.detach())
    assert torch.equal(model.state_dict()[b_name], ref.bias.detach())
    bound = 1 / d ** 0.5
    assert model.state_dict()[b_name].abs().max() <= bound and model.state_dict()[b_name].abs().max() > 0
    assert init_linear.pretrained_head({}) is None
