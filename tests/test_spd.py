"""SPD (pipeline.methods.spd): hand-computed steps, invariants, a reference loop, Adam, resume, memory, counters."""
import io
import math
import os

import pytest
import torch

from pipeline.methods import spd
from pipeline.methods.spd import SPD


def one_step(theta0, theta, grad, lam, lr=1.0, eps=0.0):
    """One SPD step from anchor theta0 with weights moved to theta.

    float64 and eps 0, so Adam's first step is exactly -lr*sign(g).
    """
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = SPD([p], lr=lr, eps=eps, lam=lam)
    with torch.no_grad():
        p.copy_(torch.tensor(theta, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()
    return p.detach(), opt.projection_fractions()[0][1]


def test_hand_step_projected():
    # theta0 = (1, -1), theta = (4, 3): d = (3, 4), |d| = 5. g = (10, -1): <g, d> = 26 > 0, so c = -26 < 0.
    # Adam's first step is -lr*sign(g) = (-1, +1): theta~ = (3, 4), theta~ - theta0 = (2, 5), |.| = sqrt(29).
    # r = (sqrt(29) - 5) / sqrt(29); theta = theta~ - 0.5 r (2, 5).
    r = (math.sqrt(29) - 5) / math.sqrt(29)
    new, frac = one_step([1.0, -1.0], [4.0, 3.0], [10.0, -1.0], lam=0.5)
    expected = torch.tensor([3 - 0.5 * r * 2, 4 - 0.5 * r * 5], dtype=torch.float64)
    assert torch.allclose(new, expected, rtol=0, atol=1e-12)
    assert frac == 1.0


def test_hand_step_not_projected():
    # Same weights, g = (-1, -10): <g, d> = -3 - 40 = -43 < 0, so c = 43 >= 0: plain Adam even though
    # theta~ = (5, 4) is farther out (|theta~ - theta0| = |(4, 5)| = sqrt(41) > 5, so r would be > 0).
    new, frac = one_step([1.0, -1.0], [4.0, 3.0], [-1.0, -10.0], lam=0.5)
    assert torch.allclose(new, torch.tensor([5.0, 4.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert frac == 0.0


def test_hand_step_projected_ratio_clamped_to_zero():
    # g = (1, 1): <g, d> = 7 > 0, projected; theta~ = (3, 2), |theta~ - theta0| = |(2, 3)| = sqrt(13) < 5,
    # so r = clamp((sqrt(13) - 5) / sqrt(13), 0, 1) = 0 and the step is plain Adam.
    new, frac = one_step([1.0, -1.0], [4.0, 3.0], [1.0, 1.0], lam=1.0)
    assert torch.allclose(new, torch.tensor([3.0, 2.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert frac == 1.0  # the condition held; the projection applied with r = 0


def adam_preview(p, g, state, lr, betas, eps):
    """theta~ (Adam's step alone) from the optimizer's state before its step."""
    b1, b2 = betas
    t = float(state["step"]) + 1 if "step" in state else 1.0
    m = b1 * state["exp_avg"] + (1 - b1) * g if "exp_avg" in state else (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g if "exp_avg_sq" in state else (1 - b2) * g * g
    return p - lr / (1 - b1 ** t) * m / (v.sqrt() / math.sqrt(1 - b2 ** t) + eps)


def test_lambda_one_keeps_the_radius():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in [(6, 5), (7,), (3, 2, 2)]]
    opt = SPD(params, lr=0.05, lam=1.0)
    checked = 0
    for _ in range(12):
        before = [p.detach().clone() for p in params]
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        previews = [adam_preview(p.detach(), g, opt.state[p], 0.05, (0.9, 0.999), 1e-8) for p, g in zip(params, grads)]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, b, g, pt in zip(params, before, grads, previews):
            a = opt.state[p]["anchor"]
            old, new = (b - a).norm(), (p.detach() - a).norm()
            projected = float((g * (b - a)).sum()) > 0
            if projected and (pt - a).norm() > old:  # r > 0
                assert abs(float(new - old)) <= 1e-6 * float(old)
                checked += 1
    assert checked >= 5


class ReferenceSPD:
    """The equations one tensor at a time, as written in the paper (no shared code with SPD)."""

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.groups = [{"params": g["params"], "lam": g["lam"], "lr": lr, "betas": betas, "eps": eps} for g in groups]
        self.state = {p: {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p), "anchor": p.detach().clone()}
                      for g in groups for p in g["params"]}

    @torch.no_grad()
    def step(self):
        for group in self.groups:
            (b1, b2), lr, eps, lam = group["betas"], group["lr"], group["eps"], group["lam"]
            for p in group["params"]:
                s, g = self.state[p], p.grad
                s["t"] += 1
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                new = p - lr / (1 - b1 ** s["t"]) * s["m"] / (s["v"].sqrt() / math.sqrt(1 - b2 ** s["t"]) + eps)
                if lam > 0:
                    c = -(g * (p - s["anchor"])).sum()
                    if c < 0:
                        new_norm, old_norm = (new - s["anchor"]).norm(), (p - s["anchor"]).norm()
                        r = ((new_norm - old_norm) / new_norm).clamp(0, 1) if new_norm > 0 else 0.0
                        new = new - lam * r * (new - s["anchor"])
                p.copy_(new)


SHAPES = [(1,), (3,), (4, 5), (2, 3, 4), (16, 8), (33,)]


def make_params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def grouped(params, lams=(0.3, 1.0, 0.0)):
    """Three groups of two tensors each, one per lam."""
    return [{"params": params[2 * i:2 * i + 2], "lam": lam} for i, lam in enumerate(lams)]


def run(opt, params, steps, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_loop_over_50_steps(dtype):
    ours, ref = make_params(dtype), make_params(dtype)
    opt = SPD(grouped(ours), lr=0.02)
    run(opt, ours, 50, dtype=dtype)
    run(ReferenceSPD(grouped(ref), lr=0.02), ref, 50, dtype=dtype)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()
    fractions = [f for _, f in opt.projection_fractions()]
    assert len(fractions) == 4 and 0 < sum(fractions) / 4 < 1  # both branches were exercised


def test_lam_zero_is_adam():
    ours, ref = make_params(torch.float32), make_params(torch.float32)
    opt = SPD(ours, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    run(opt, ours, 20, dtype=torch.float32)
    run(torch.optim.Adam(ref, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0), ref, 20, dtype=torch.float32)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert all("anchor" not in opt.state[p] for p in ours) and opt.projection_fractions() == []


def test_state_dict_round_trip_is_exact():
    def build(params):
        names = [f"w{i}" for i in range(len(params))]
        groups = grouped(params)
        for i, g in enumerate(groups):
            g["param_names"] = names[2 * i:2 * i + 2]
        return SPD(groups, lr=0.02)

    straight = make_params(torch.float32)
    opt = build(straight)
    run(opt, straight, 5, seed=1, dtype=torch.float32)
    run(opt, straight, 5, seed=2, dtype=torch.float32)

    first = make_params(torch.float32)
    opt1 = build(first)
    run(opt1, first, 5, seed=1, dtype=torch.float32)
    buf = io.BytesIO()
    torch.save({"opt": opt1.state_dict(), "params": [p.detach() for p in first]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = build(resumed)  # its own anchors would be the resumed weights; loading must restore the saved ones
    opt2.load_state_dict(saved["opt"])
    run(opt2, resumed, 5, seed=2, dtype=torch.float32)

    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    for a, b in zip(straight, resumed):
        sa, sb = opt.state[a], opt2.state[b]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert opt.projection_fractions() == opt2.projection_fractions()
    assert [n for n, _ in opt2.projection_fractions()] == ["w0", "w1", "w2", "w3"]


def test_counters_stay_float32_for_bf16_params():
    # torch casts loaded state to the parameter's dtype; a bf16 counter could not count past 256.
    params = [torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16)) for _ in range(2)]
    opt = SPD(params, lr=0.01, lam=1.0)
    run(opt, params, 3, dtype=torch.bfloat16)
    opt2 = SPD([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.01, lam=1.0)
    opt2.load_state_dict(opt.state_dict())
    for p in opt2.param_groups[0]["params"]:
        assert opt2.state[p]["projected"].dtype == opt2.state[p]["step"].dtype == torch.float32
    assert opt2.projection_fractions() == opt.projection_fractions()


def test_state_memory_per_parameter():
    params = make_params(torch.float32)
    opt = SPD(grouped(params))
    run(opt, params, 2, dtype=torch.float32)
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p].values()
            full = sum(t.numel() * t.element_size() for t in state if t.numel() == p.numel() and t.dim() > 0)
            assert full == (12 if group["lam"] > 0 else 8) * p.numel()
            assert all(t.dim() == 0 for t in state if not (t.numel() == p.numel() and t.dim() > 0))
            assert len(opt.state[p]) == (5 if group["lam"] > 0 else 3)  # + step (and projected) scalars


def test_projection_fractions_with_known_signs():
    # lr = 0 keeps theta fixed, so d = theta - theta0 = delta on every step and the sign of <g, d> is chosen.
    delta = torch.tensor([1.0, -2.0, 0.5])
    body = [torch.nn.Parameter(torch.zeros(3)) for _ in range(5)]
    head = torch.nn.Parameter(torch.zeros(3))
    opt = SPD([{"params": body, "param_names": list("abcde"), "lam": 0.5},
               {"params": [head], "param_names": ["head"], "lam": 0.0}], lr=0.0)
    with torch.no_grad():
        for p in body[:4]:
            p.add_(delta)  # e stays at its anchor: <g, 0> = 0 is not c < 0
    signs = {"a": [1, 1, 1, 1], "b": [-1, -1, -1, -1], "c": [1, -1, 1, -1], "d": [-1, -1, 1, -1], "e": [1, 1, 1, 1]}
    for k in range(4):
        for name, p in zip("abcde", body):
            p.grad = signs[name][k] * delta  # <g, d> = sign * |delta|^2; c < 0 exactly when sign > 0
        head.grad = torch.ones(3)
        opt.step()
    assert opt.projection_fractions() == [("a", 1.0), ("b", 0.0), ("c", 0.5), ("d", 0.25), ("e", 0.0)]


def test_unnamed_group_reports_none():
    p = torch.nn.Parameter(torch.ones(2))
    opt = SPD([p], lam=1.0)
    assert opt.projection_fractions()[0][0] is None and math.isnan(opt.projection_fractions()[0][1])


@pytest.mark.skipif(not os.environ.get("SPD_TEST_COMPILED"),
                    reason="needs torch.compile (5-20 s); set SPD_TEST_COMPILED=1")
def test_compiled_path_matches_eager(monkeypatch):
    monkeypatch.setattr(spd, "_COMPILED_MIN", 1)  # these tensors are tiny; compile them all
    eager, comp = make_params(torch.float32), make_params(torch.float32)
    ref = SPD(grouped(eager), lr=0.02)
    run(ref, eager, 20, dtype=torch.float32)
    opt = SPD(grouped(comp), lr=0.02, compiled=True)
    run(opt, comp, 20, dtype=torch.float32)
    for a, b in zip(eager, comp):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert opt.projection_fractions() == ref.projection_fractions()
