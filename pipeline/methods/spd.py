"""SPD: Adam with Selective Projection Decay (Tian, Huang, Kira, NeurIPS 2024).

Per parameter tensor theta with anchor theta_0 (the weights when the optimizer is built):

    theta~ = theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)      (Adam, no weight decay)
    c      = -<g, theta - theta_0>                                              (raw gradient, whole tensor)
    r      = clamp((|theta~ - theta_0| - |theta - theta_0|) / |theta~ - theta_0|, 0, 1)
    theta  = theta~ - lam * r * (theta~ - theta_0)   if c < 0, else theta~

``lam`` is not scaled by the learning rate; lam=1 projects theta~ back onto the radius
|theta - theta_0|. Groups with lam=0 are plain Adam and keep no anchor, so a new head can be
its own group (as SPD's authors advise). State: exp_avg, exp_avg_sq and, for lam>0, anchor
(12 B/param; 20 B with weights and grads), plus 0-dim ``step`` and ``projected`` counters.

The step never syncs the host: the condition becomes a per-tensor weight of a final lerp toward
the anchor. The default path is torch's multi-tensor fused Adam kernel plus foreach reductions
and updates (20 memory passes per element; on CPU in cache-sized chunks). ``compiled=True``
instead runs one torch.compile'd kernel per tensor (11 passes), compiled on the first step.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import torch
from torch import Tensor

_CPU_CHUNK = 1 << 20  # elements per chunk on CPU: the chunk's tensors stay in cache between passes
# Below this many elements a compiled call (guards, wrapper, OpenMP start-up) costs more than the work;
# the foreach path batches such tensors instead.
_COMPILED_MIN = 1 << 16
_compiled_tensor_step = None


class SPD(torch.optim.Optimizer):
    """Adam with Selective Projection Decay.

    Args:
        params: parameters or param groups; a group may set its own ``lam`` and ``param_names``.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and its square.
        eps: term added to the denominator for numerical stability.
        lam: projection strength (the paper's lambda, ``weight_decay`` in the official code).
        compiled: run lam>0 tensors through a torch.compile'd fused kernel (optional, faster on CPU).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, lam: float = 0.0,
                 compiled: bool = False):
        if lr < 0 or eps < 0 or lam < 0:
            raise ValueError(f"SPD: lr, eps and lam must be >= 0 (got {lr}, {eps}, {lam})")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"SPD: betas must lie in [0, 1) (got {betas})")
        self.compiled = compiled
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "lam": lam})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; for lam > 0, anchor its parameters at their current values."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["lam"] > 0:
            with torch.no_grad():
                for p in group["params"]:
                    self.state[p]["anchor"] = p.detach().clone(memory_format=torch.preserve_format)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then keep the counters in float32 on the parameter's device."""
        super().load_state_dict(state_dict)
        # torch keeps 'step' where it was saved and casts other state to the parameter's dtype,
        # but the fused kernel needs steps on the device and a bf16 counter would stop at 256.
        saved = state_dict["state"]
        ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        for i, p in zip(ids, chain.from_iterable(g["params"] for g in self.param_groups)):
            for key in ("step", "projected"):
                if key in saved.get(i, {}):
                    self.state[p][key] = saved[i][key].to(p.device, torch.float32, copy=True)

    def projection_fractions(self) -> list[tuple[str | None, float]]:
        """(name or None, fraction of its steps on which the projection applied) for every lam>0 parameter."""
        out = []
        for group in self.param_groups:
            if group["lam"] <= 0:
                continue
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                state = self.state[p]
                steps = float(state["step"]) if "step" in state else 0.0
                out.append((name, float(state["projected"]) / steps if steps else math.nan))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            anchored = group["lam"] > 0
            buckets: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SPD does not support sparse gradients")
                state = self.state[p]
                if anchored and "anchor" not in state:
                    raise RuntimeError("SPD: a group's lam became > 0 after it was built without an anchor")
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if anchored:
                        state["projected"] = torch.zeros((), dtype=torch.float32, device=p.device)
                lists = buckets.setdefault((p.device, p.dtype), [[] for _ in range(7)])
                for lst, t in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                                          state.get("anchor"), state.get("projected"))):
                    lst.append(t)
            hyper = {"lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1],
                     "eps": group["eps"], "lam": group["lam"]}
            for (device, _), lists in buckets.items():
                if not anchored:
                    _spd_eager(*lists[:5], None, None, **hyper)
                elif self.compiled:
                    _spd_compiled(*lists, **hyper)
                else:
                    for chunk in _chunks(lists, _CPU_CHUNK if device.type == "cpu" else math.inf):
                        _spd_eager(*chunk, **hyper)
        return loss


def _chunks(lists: list[list[Tensor]], limit: float) -> Iterator[list[list[Tensor]]]:
    """Split parallel tensor lists into runs of at most ``limit`` elements (a larger tensor runs alone)."""
    start, size = 0, 0
    for i, p in enumerate(lists[0]):
        if size and size + p.numel() > limit:
            yield [lst[start:i] for lst in lists]
            start, size = i, 0
        size += p.numel()
    yield [lst[start:] for lst in lists]


def _spd_eager(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               steps: list[Tensor], anchors: list[Tensor] | None, counts: list[Tensor] | None, *, lr: float,
               beta1: float, beta2: float, eps: float, lam: float) -> None:
    """One SPD step over tensors of one device and dtype (``anchors=None``: plain Adam)."""
    if anchors is not None:
        dev = torch._foreach_sub(params, anchors)  # the condition and old radius use theta before the update
        # (1, n) @ (n, 1) with the column a transposed row: one BLAS dot per tensor, no product temporary.
        dots = torch._foreach_mm([x.reshape(1, -1) for x in grads], [x.reshape(1, -1).t() for x in dev])
        old_norms = torch._foreach_norm(dev)
    torch._foreach_add_(steps, 1.0)
    # torch's own multi-tensor Adam kernel: one pass, bias corrections on device from the step tensors.
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                       weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
    if anchors is None:
        return
    del dev  # freed first so that the allocator can hand the same memory back
    new_norm = torch.stack(torch._foreach_norm(torch._foreach_sub(params, anchors)))
    old_norm = torch.stack(old_norms)
    ratio = torch.where(new_norm > 0, (new_norm - old_norm) / new_norm, 0.0).clamp_(0, 1)
    project = torch.cat(dots).view(-1) > 0  # c = -<g, theta - theta_0> < 0
    weights = torch.where(project, lam * ratio, 0.0).to(params[0].dtype)
    # A weight of 0 leaves theta~ bit-for-bit unchanged, so no branch (and no host sync) is needed.
    torch._foreach_lerp_(params, anchors, list(weights.unbind()))
    torch._foreach_add_(counts, list(project.to(torch.float32).unbind()))


def _spd_tensor(p: Tensor, g: Tensor, m: Tensor, v: Tensor, a: Tensor, count: Tensor, coef: Tensor) -> None:
    """The same step for one flat tensor, written for torch.compile: two fused loops over the elements."""
    neg_step, bc2, eps, one_minus_beta1, beta2, one_minus_beta2, lam = (c.to(p.dtype) for c in coef.unbind())
    m_new = m + (g - m) * one_minus_beta1
    v_new = v * beta2 + g * g * one_minus_beta2
    p_new = p + neg_step * (m_new / (v_new.sqrt() / bc2 + eps))
    dev = p - a
    old_sq = dev.square().sum()
    # |e|^2 - |d|^2 as sum((e - d)(e + d)) has no cancellation, so float32 sums give an accurate r.
    diff = ((p_new - p) * (p_new - a + dev)).sum()
    new_norm, old_norm = (old_sq + diff).clamp_min(0).sqrt(), old_sq.sqrt()
    ratio = torch.where(new_norm > 0, diff / ((new_norm + old_norm) * new_norm), 0.0).clamp(0, 1)
    project = (g * dev).sum() > 0
    weight = torch.where(project, lam * ratio, 0.0)
    m.copy_(m_new)
    v.copy_(v_new)
    p.copy_(p_new + weight * (a - p_new))
    count.add_(project.to(count.dtype))


def _flat(x: Tensor) -> Tensor:
    # A 1-D alias with no view base: dynamo would guard (and recompile) on each base's shape.
    return x.new_empty(0).set_(x.untyped_storage(), x.storage_offset(), (x.numel(),), (1,))


def _spd_compiled(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[Tensor], anchors: list[Tensor], counts: list[Tensor], *, lr: float, beta1: float,
                  beta2: float, eps: float, lam: float) -> None:
    """Compiled path: one fused kernel per large contiguous tensor; the others take the eager path."""
    global _compiled_tensor_step
    if _compiled_tensor_step is None:
        _compiled_tensor_step = torch.compile(_spd_tensor, dynamic=True, fullgraph=True)
    lists = (params, grads, exp_avgs, exp_avg_sqs, steps, anchors, counts)
    dense = [i for i, x in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, anchors))
             if x[0].numel() >= _COMPILED_MIN and all(t.is_contiguous() for t in x)]
    rest = sorted(set(range(len(params))) - set(dense))
    if rest:
        _spd_eager(*([lst[i] for i in rest] for lst in lists), lr=lr, beta1=beta1, beta2=beta2, eps=eps, lam=lam)
    if not dense:
        return
    # Per-tensor scalars computed here once: inside the kernel they would be recomputed per element.
    torch._foreach_add_([steps[i] for i in dense], 1.0)
    t = torch.stack([steps[i] for i in dense]).double()
    full = torch.ones_like(t)
    coef = torch.stack([-lr / (1 - beta1 ** t), (1 - beta2 ** t).sqrt(), eps * full, (1 - beta1) * full,
                        beta2 * full, (1 - beta2) * full, lam * full], dim=1)
    coefs = torch._foreach_clone(list(coef.unbind()))  # plain tensors: dynamo guards on a view's base
    # Largest first: the first call's sizes set the kernel's parallelisation heuristics.
    for k in sorted(range(len(dense)), key=lambda k: -params[dense[k]].numel()):
        i = dense[k]
        _compiled_tensor_step(*(_flat(lst[i]) for lst in (params, grads, exp_avgs, exp_avg_sqs, anchors)),
                              counts[i], coefs[k])
    torch.autograd.graph.increment_version([params[i] for i in dense])


def build(groups: list[dict], settings: dict, device: torch.device) -> SPD:
    """SPD over the parameter groups: ``spd_lambda`` on the backbone, ``head_spd_lambda`` on the new head."""
    lam, head_lam = float(settings["spd_lambda"]), float(settings["head_spd_lambda"])
    spd_groups = [{"params": g["params"], "param_names": g["param_names"], "lr": g["lr"], "lr_factor": g["lr_factor"],
                   "lam": head_lam if g["head"] else lam} for g in groups]
    return SPD(spd_groups, lr=float(settings["lr"]), betas=tuple(settings["betas"]))


def layer_stats(optimizer: SPD) -> dict[str, dict[str, float]]:
    """``spd_projected``: the fraction of steps on which each anchored tensor was projected."""
    return {name: {"spd_projected": frac} for name, frac in optimizer.projection_fractions() if name is not None}
