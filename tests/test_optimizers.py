"""Optimizers against their definitions: AdamP/SGDP vs the official package, L2-SP vs autograd, settings."""
import copy

import pytest
import torch
from torch import nn

from pipeline.config.settings import default_settings, method_settings
from pipeline.methods.assemble import assemble, effective_lr
from pipeline.methods.l2sp import L2SP
from pipeline.methods.spd import SPD

adamp = pytest.importorskip("adamp", reason="the official AdamP/SGDP package is a test dependency")


def conv_net() -> nn.Module:
    """Conv weights followed by BatchNorm are scale-invariant: AdamP/SGDP's projection branch fires."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def run_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 50) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def official_twin(model: nn.Module, ours: torch.optim.Optimizer, cls, **kw):
    """The official optimizer on a copy of the model, with the same parameter groups as ours."""
    twin = copy.deepcopy(model)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    twin_params = list(twin.parameters())
    groups = [{"params": [twin_params[index[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
              for g in ours.param_groups]
    return twin, cls(groups, **kw)


@pytest.mark.parametrize("name, cls, extra, nesterov", [
    ("adamp", adamp.AdamP, {"betas": (0.9, 0.999)}, False),   # the official default
    ("adamp", adamp.AdamP, {"betas": (0.9, 0.999)}, True),
    ("sgdp", adamp.SGDP, {"momentum": 0.9}, True),             # the official README's SGDP setting
])
def test_adamp_sgdp_match_official_package_over_50_steps(name, cls, extra, nesterov):
    model = conv_net()
    settings = {**default_settings(), "optimizer": name, "lr": 0.01, "weight_decay": 1e-2, "nesterov": nesterov}
    ours = assemble(model, settings).optimizer
    assert all(g["delta"] == 0.1 and g["wd_ratio"] == 0.1 and g["nesterov"] is nesterov for g in ours.param_groups)
    twin, official = official_twin(model, ours, cls, lr=0.01, delta=0.1, wd_ratio=0.1, nesterov=nesterov, **extra)
    start = copy.deepcopy(model)
    run_steps(model, ours)
    run_steps(twin, official)
    for (n, a), b, s in zip(model.named_parameters(), twin.parameters(), start.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), n
        assert not torch.equal(a, s), n
    # The projection mattered: plain SGD/Adam with the same settings ends elsewhere.
    plain = copy.deepcopy(start)
    base = dict(settings, optimizer="adamw" if name == "adamp" else "sgd", weight_decay=0.0)
    run_steps(plain, assemble(plain, base).optimizer)
    conv = "0.weight"
    assert not torch.allclose(dict(plain.named_parameters())[conv], dict(model.named_parameters())[conv], atol=1e-4)


def test_official_defaults_are_set_explicitly():
    for name in ("adamp", "sgdp"):
        opt = assemble(conv_net(), {**default_settings(), "optimizer": name, "lr": 0.01}).optimizer
        assert {(g["delta"], g["wd_ratio"], g["nesterov"]) for g in opt.param_groups} == {(0.1, 0.1, False)}


def test_sgdp_without_nesterov_keeps_the_papers_momentum():
    """SGDP, Nesterov off (the official default): timm follows the paper's algorithm, where the
    momentum buffer is mu * buf + g and only the step is projected. The official package's
    ``d_p = buf`` aliases the buffer, so its in-place projection also rewrites the momentum:
    the two trajectories differ by design, and this test pins down which one is the paper's."""
    model = conv_net()
    ours = assemble(model, {**default_settings(), "optimizer": "sgdp", "lr": 0.01}).optimizer
    twin, official = official_twin(model, ours, adamp.SGDP, lr=0.01, momentum=0.9, delta=0.1, wd_ratio=0.1,
                                   nesterov=False)
    expected = {p: torch.zeros_like(p) for m in (model, twin) for p in m.parameters()}
    g = torch.Generator().manual_seed(1)
    official_left_recurrence = False
    for _ in range(20):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        for m, opt in ((model, ours), (twin, official)):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            for p in m.parameters():
                expected[p].mul_(0.9).add_(p.grad)   # the paper's momentum, from each model's own gradients
            opt.step()
        for p in model.parameters():
            assert torch.allclose(ours.state[p]["momentum"], expected[p], atol=1e-6)
        conv = twin[0].weight
        official_left_recurrence |= not torch.allclose(official.state[conv]["momentum"], expected[conv], atol=1e-6)
        # Parameters the projection never touches (1-D) keep the recurrence in the official code too.
        assert torch.allclose(official.state[twin[8].bias]["momentum"], expected[twin[8].bias], atol=1e-6)
    assert official_left_recurrence


def test_param_groups_skip_norms_biases_and_frozen():
    model = conv_net()
    model[0].weight.requires_grad_(False)
    method = assemble(model, {**default_settings(), "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1})
    opt, info = method.optimizer, method.facts
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    plain = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert all(p.ndim > 1 for p in decayed) and all(p.ndim <= 1 for p in plain)
    assert all(p is not model[0].weight for g in opt.param_groups for p in g["params"])
    assert info["frozen_params"] == model[0].weight.numel()
    assert opt.param_groups[0]["foreach"] is True   # torch's multi-tensor kernels on CPU


def test_sgd_is_heavy_ball_and_effective_lr_is_recorded():
    model = conv_net()
    cfg = {"finetune": {}, "methods": {"m": {"init": "random", "optimizer": "sgd", "momentum": 0.9,
                                             "effective_lr": 0.1}}}
    settings = method_settings(cfg, "m")
    assert settings["lr"] == pytest.approx(0.01) and "effective_lr" not in settings
    method = assemble(model, settings)
    opt, info = method.optimizer, method.facts
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"] is False
    assert info["effective_lr"] == pytest.approx(0.1) == effective_lr(settings)
    assert effective_lr({**settings, "optimizer": "adamw"}) is None


def test_spd_groups_give_the_head_its_own_lambda():
    model = conv_net()
    head = ("8.weight", "8.bias")
    opt = assemble(model, {**default_settings(), "optimizer": "spd", "lr": 1e-3, "spd_lambda": 0.5}, head).optimizer
    assert isinstance(opt, SPD)
    lams = {n: g["lam"] for g in opt.param_groups for n in g["param_names"]}
    assert lams["8.weight"] == lams["8.bias"] == 0.0 and lams["0.weight"] == 0.5


def test_l2sp_gradient_equals_autograd_of_the_penalty():
    model = conv_net()
    head = ("8.weight", "8.bias")
    anchor = copy.deepcopy(model)
    reg = L2SP(model, alpha=0.3, beta=0.05, head=head)
    with torch.no_grad():                       # move away from the anchor so the penalty is not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))

    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    reg.after_backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    body = sum(0.5 * 0.3 * (p - a).pow(2).sum() for (n, p), a in zip(model.named_parameters(), anchor.parameters())
               if n not in head)
    head_pen = sum(0.5 * 0.05 * p.pow(2).sum() for n, p in model.named_parameters() if n in head)
    assert torch.allclose(reg.penalty(), body + head_pen)
    (nn.functional.cross_entropy(model(x), y) + body + head_pen).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-6), n


def test_l2sp_anchors_only_the_trainable_backbone():
    model = conv_net()
    model[0].weight.requires_grad_(False)
    reg = L2SP(model, alpha=0.1, beta=0.0, head=("8.weight", "8.bias"))
    anchored = sum(a.numel() for a in reg.anchors)
    expected = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("8."))
    assert anchored == expected and not reg.head
    assert not L2SP(model, 0.0, 0.0, ()).anchors    # off: no memory


def test_weight_decay_reaches_every_tensor_when_asked():
    """wise-ft and model-soups: ``torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)`` over every
    trainable tensor, biases, norms and embeddings included (mlfoundations/wise-ft@58b7a4b:src/models/
    finetune.py:56-64; mlfoundations/model-soups@d5398f1:finetune.py:88-118). One step from the same
    gradients must move every tensor as that optimizer does."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32)   # pos/cls embeddings
    twin = copy.deepcopy(model)
    settings = {**default_settings(), "optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.1}
    ours = assemble(model, {**settings, "weight_decay_scope": "all"}).optimizer
    assert {g["weight_decay"] for g in ours.param_groups} == {0.1}
    official = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
    for m, opt in ((model, ours), (twin, official)):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6, msg=n)
    # timm's groups (the default) leave biases, norms and position/class embeddings undecayed: they differ
    grouped = copy.deepcopy(twin)
    torch.manual_seed(0)
    fresh = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32)
    grouped.load_state_dict(fresh.state_dict())
    default = assemble(grouped, settings).optimizer
    assert {g["weight_decay"] for g in default.param_groups} == {0.0, 0.1}
    undecayed = {n for g in default.param_groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert {"pos_embed", "cls_token", "head.bias", "norm.weight"} <= undecayed
