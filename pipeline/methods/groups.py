"""Parameter groups: how a model's trainable tensors reach an optimizer.

* Weight decay follows timm (:func:`timm.optim.param_groups_weight_decay`): none on 1-D tensors
  (norms, biases) and on ``model.no_weight_decay()`` tensors such as position embeddings
  (``weight_decay_scope: groups``), or reaches every trainable tensor (``all``), as
  ``torch.optim.AdamW(params, weight_decay=wd)`` does in wise-ft and model-soups
  (mlfoundations/wise-ft@58b7a4b:src/models/finetune.py:56-64; mlfoundations/model-soups@d5398f1:finetune.py:88-118).
* Each tensor's learning-rate factor comes from the policies (layer decay, embedding lr). A
  group's ``lr`` is the base lr times its factor (kept as ``lr_factor``), so any per-group
  schedule (warmup, cosine) scales it in proportion.
* The classifier's tensors are always a group of their own (``head: True``), so an optimizer
  may treat a new head apart (SPD gives it no anchor).

Groups follow the order of ``model.named_parameters()`` and carry ``param_names``.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from pipeline import compat

compat.apply()
from timm.optim import param_groups_weight_decay  # noqa: E402


def weight_decays(model: nn.Module, weight_decay: float, scope: str = "groups") -> dict[int, float]:
    """Weight decay per trainable tensor (by ``id``): as timm's groups assign it, or the same on ``all``."""
    if weight_decay <= 0 or scope == "all":
        return {id(p): max(weight_decay, 0.0) for p in model.parameters() if p.requires_grad}
    if scope != "groups":
        raise ValueError(f"weight_decay_scope must be groups or all, got {scope!r}")
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return {id(p): float(g["weight_decay"]) for g in groups for p in g["params"]}


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_scale: Mapping[str, float],
                 head: Collection[str], scope: str = "groups") -> list[dict]:
    """Trainable tensors grouped by (weight decay, lr factor, head), in parameter order."""
    decay = weight_decays(model, weight_decay, scope)
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (decay[id(p)], float(lr_scale.get(name, 1.0)), name in head)
        group = groups.setdefault(key, {"params": [], "param_names": [], "weight_decay": key[0],
                                        "lr": lr * key[1], "lr_factor": key[1], "head": key[2]})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def kernel_options(device: torch.device, fused_ok: bool = True) -> dict:
    """torch's fused kernels on CUDA where the optimizer has them, else its multi-tensor (foreach) ones."""
    return {"fused": True} if fused_ok and device.type == "cuda" else {"foreach": True}


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled learning rate, before any group's ``lr_factor``."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_factor", 1.0)
