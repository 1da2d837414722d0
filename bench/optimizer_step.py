"""Time one SPD optimizer step on ViT-S/16's parameters: multi-tensor SPD vs a per-parameter loop.

    python bench/optimizer_step.py [--device cpu|cuda] [--steps N] [--repeats R] [--lam L] [--threads T]
                                   [--no-compiled] [--cold-malloc]

The parameter set has the real shapes of timm's ``vit_small_patch16_224`` (22.05M parameters in
152 tensors), all in one group with lam > 0. The gradients are random (a fixed pool, with a
random sign per tensor and step, so that about half the tensors meet SPD's condition each step).
Three optimizers start from the same weights (their anchor) and see the same gradients: SPD's
default path (fused Adam + foreach), ``SPD(compiled=True)`` (its first step compiles: 15-20 s
with a cold inductor cache, a few seconds with a warm one) and the loop below. Steps alternate
between them after warmup, so load on the machine affects all alike. At the end the weights must
agree with the loop's (allclose); the median, mean and best time per step, the ratios and the
fraction of (tensor, step) pairs projected are printed.

On CPU the step is bound by memory passes over the 22M-element arrays, not by dispatching ops
for 152 tensors: per element the loop makes about 24 (not projected) to 32 (projected) passes,
each over one tensor at a time so they mostly hit cache; the default SPD path makes 20 in
cache-sized chunks; the compiled kernel about 11. The loop also allocates temporaries per tensor;
glibc's malloc is first warmed as a training process's activations would warm it (see
``--cold-malloc``), otherwise page faults on those temporaries would inflate the loop's time.

The baseline, :class:`LoopSPD`, is the same equations written one tensor at a time as the paper
and the official ``adamSPD.py`` do (branching on the condition per tensor), with in-place ops
where they are natural and a BLAS dot for the condition. Target (issue): SPD at least 3x faster
than the loop on CPU.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.methods.spd import SPD


class LoopSPD(torch.optim.Optimizer):
    """SPD one parameter tensor at a time (the baseline)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 lam: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "lam": lam})
        for group in self.param_groups:
            if group["lam"] > 0:
                for p in group["params"]:
                    self.state[p]["anchor"] = p.detach().clone()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (beta1, beta2), lr, eps, lam = group["betas"], group["lr"], group["eps"], group["lam"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
                if lam > 0:
                    anchor = state["anchor"]
                    dev = p - anchor
                    project = -torch.dot(g.reshape(-1), dev.reshape(-1)) < 0
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
                if lam > 0 and project:
                    new_dev = p - anchor
                    new_norm, old_norm = new_dev.norm().item(), dev.norm().item()
                    r = min(max((new_norm - old_norm) / new_norm, 0.0), 1.0) if new_norm > 0 else 0.0
                    p.sub_(new_dev, alpha=lam * r)


def vit_small_shapes() -> list[torch.Size]:
    """The parameter shapes of timm's vit_small_patch16_224."""
    from pipeline import compat
    compat.apply()
    import timm
    return [p.shape for p in timm.create_model("vit_small_patch16_224", pretrained=False).parameters()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per repeat and optimizer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--cold-malloc", action="store_true",
                    help="skip the allocation that warms glibc's malloc as a training process would")
    ap.add_argument("--no-compiled", action="store_true", help="skip SPD(compiled=True) (its first step compiles)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if device.type == "cpu" and not args.cold_malloc:
        # In training, freeing ~30 MB activations raises glibc's mmap threshold (to at most 32 MB), so the
        # loop's per-tensor temporaries come from the heap. One such allocation here does the same; without
        # it every temporary is a fresh mmap and page faults make the loop look about 1.5x slower.
        torch.empty(30 << 20, dtype=torch.uint8)
    shapes = vit_small_shapes()
    gen = torch.Generator().manual_seed(0)
    init = [(torch.randn(s, generator=gen) * 0.02).to(device) for s in shapes]
    pool = [[(torch.randn(s, generator=gen) * 1e-2).to(device) for s in shapes] for _ in range(2)]
    pool = [(grads, [-g for g in grads]) for grads in pool]  # both signs made up front: no allocation in the loop
    variants = {
        "spd (foreach)": lambda ps: SPD(ps, lr=args.lr, lam=args.lam),
        "spd (compiled)": lambda ps: SPD(ps, lr=args.lr, lam=args.lam, compiled=True),
        "loop": lambda ps: LoopSPD(ps, lr=args.lr, lam=args.lam),
    }
    if args.no_compiled:
        del variants["spd (compiled)"]
    params = {name: [x.clone().requires_grad_() for x in init] for name in variants}
    opts = {name: make(params[name]) for name, make in variants.items()}
    print(f"{len(shapes)} tensors, {sum(math.prod(s) for s in shapes) / 1e6:.2f}M params, device {device}, "
          f"lam {args.lam}, lr {args.lr}, threads {torch.get_num_threads()}")

    times: dict[str, list[float]] = {name: [] for name in variants}
    first: dict[str, float] = {}
    n_total = args.warmup + args.steps * args.repeats
    for i in range(n_total):
        pos, neg = pool[i % len(pool)]
        signs = torch.randint(0, 2, (len(pos),), generator=gen).mul(2).sub(1).tolist()
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for name in order:
            for k, (p, s) in enumerate(zip(params[name], signs)):
                p.grad = pos[k] if s > 0 else neg[k]
            sync()
            t0 = time.perf_counter()
            opts[name].step()
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            elif i == 0:
                first[name] = time.perf_counter() - t0

    ref = params["loop"]
    for name in variants:
        ok = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(params[name], ref))
        print(f"{name:>16}: median {1e3 * statistics.median(times[name]):6.1f} ms/step, "
              f"mean {1e3 * statistics.fmean(times[name]):6.1f}, best {1e3 * min(times[name]):6.1f}   "
              f"first step {first[name]:5.2f} s   allclose to loop: {ok}")
    spd = opts["spd (foreach)"]
    frac = statistics.fmean(f for _, f in spd.projection_fractions())
    base = statistics.median(times["loop"])
    for name in variants:
        if name != "loop":
            print(f"speed-up of {name} over the loop: {base / statistics.median(times[name]):.2f}x (medians), "
                  f"{statistics.fmean(times['loop']) / statistics.fmean(times[name]):.2f}x (means)")
    print(f"fraction of (tensor, step) pairs projected: {frac:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
