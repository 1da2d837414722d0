"""Bytes per parameter of weights + gradients + optimizer state, for every fine-tuning method.

Measured from the tensors actually allocated after two real training steps
(unique storages of the parameters, their ``.grad``, every tensor in the
optimizer's state and L2-SP's anchors), through the same factory the pipeline
uses. On a GPU it also reports ``torch.cuda.memory_allocated`` after the step
(with activations freed) and ``torch.cuda.max_memory_allocated`` during it
(activations and the optimizer's temporaries included), per trainable parameter.

Targets (fp32, methods.md): SGD 12 B/param, AdamW 16, SPD at most 20 (the
official code allocates 24), freeze-embed SGD below 12 over the whole model.

    python bench/optimizer_memory.py [--model vit_small_patch16_224] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import compat

compat.apply()
import timm  # noqa: E402

from pipeline.config.settings import default_settings  # noqa: E402
from pipeline.methods.assemble import assemble  # noqa: E402
from pipeline.models.backbone import head_names  # noqa: E402

METHODS = {
    "SGD (momentum 0.9)": {"optimizer": "sgd", "lr": 1e-3},
    "SGD, no momentum": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.0},
    "AdamW": {"optimizer": "adamw", "lr": 1e-4},
    "SPD (Adam + projection)": {"optimizer": "spd", "lr": 1e-4, "spd_lambda": 0.5},
    "AdamP": {"optimizer": "adamp", "lr": 1e-4},
    "SGDP": {"optimizer": "sgdp", "lr": 1e-3},
    "freeze-embed SGD": {"optimizer": "sgd", "lr": 1e-3, "freeze": "embed"},
    "SGD + L2-SP": {"optimizer": "sgd", "lr": 1e-3, "l2sp_alpha": 0.01},
    "AdamW + L2-SP": {"optimizer": "adamw", "lr": 1e-4, "l2sp_alpha": 0.01},
}
TARGETS = {"SGD (momentum 0.9)": ("trainable", "==", 12), "AdamW": ("trainable", "==", 16),
           "SPD (Adam + projection)": ("trainable", "<=", 20), "freeze-embed SGD": ("whole", "<", 12)}


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and aliases count once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            s = t.untyped_storage()
            seen[(t.device.type, s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def state_tensors(opt: torch.optim.Optimizer):
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield v


def measure(base: torch.nn.Module, settings: dict, device: torch.device, steps: int = 2) -> dict:
    model = copy.deepcopy(base).to(device).train()
    method = assemble(model, {**default_settings(), **settings}, head_names(model), device)
    opt, info = method.optimizer, method.facts
    anchors = [a for h in method.hooks for a in getattr(h, "anchors", [])]
    size = model.pretrained_cfg["input_size"][-1]
    x, y = torch.randn(2, 3, size, size, device=device), torch.randint(0, 10, (2,), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        for hook in method.hooks:
            hook.after_backward()
        opt.step()
    params = list(model.parameters())
    row = {
        "trainable": info["trainable_params"], "total": info["trainable_params"] + info["frozen_params"],
        "weights": storage_bytes(params), "grads": storage_bytes(p.grad for p in params if p.grad is not None),
        "state": storage_bytes(list(state_tensors(opt)) + anchors),
    }
    row["bytes"] = row["weights"] + row["grads"] + row["state"]
    if device.type == "cuda":
        torch.cuda.synchronize()
        row["cuda_after_step"] = torch.cuda.memory_allocated() / row["trainable"]
        row["cuda_peak"] = torch.cuda.max_memory_allocated() / row["trainable"]
    del model, opt, method, anchors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, num_classes=10)
    print(f"{args.model}: {sum(q.numel() for q in base.parameters()):,} parameters, fp32, device {device}")
    cuda = device.type == "cuda"
    header = f"{'method':26s} {'trainable':>11s} {'B/trainable':>11s} {'B/param (whole)':>15s}"
    print(header + ("  cuda after step / peak (B/trainable)" if cuda else ""))
    failed = []
    for name, settings in METHODS.items():
        r = measure(base, settings, device)
        per_trainable, per_param = r["bytes"] / r["trainable"], r["bytes"] / r["total"]
        line = f"{name:26s} {r['trainable']:>11,d} {per_trainable:>11.2f} {per_param:>15.2f}"
        if cuda:
            line += f"  {r['cuda_after_step']:.2f} / {r['cuda_peak']:.2f}"
        if name in TARGETS:
            which, op, target = TARGETS[name]
            value = per_trainable if which == "trainable" else per_param
            ok = {"==": round(value) == target, "<=": value <= target + 0.05, "<": value < target}[op]
            line += f"   target {op} {target} ({which}): {'ok' if ok else 'MISSED'}"
            if not ok:
                failed.append(name)
        print(line, flush=True)
    print("all targets met" if not failed else f"targets missed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
