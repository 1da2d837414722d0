"""Build a method's optimizer from its settings.

AdamW, SGD, AdamP and SGDP come from timm's factory (torch's foreach kernels on
CPU, fused ones on CUDA; timm's AdamP/SGDP are the official algorithms). timm's
parameter groups keep weight decay off norms, biases and ``no_weight_decay()``
tensors such as position embeddings. Every default that differs between timm
and a paper is set here explicitly, never inherited: SGD is heavy-ball (timm's
``"sgd"`` is Nesterov), and AdamP/SGDP use the official delta 0.1, wd_ratio 0.1
and no Nesterov (timm's factory: wd_ratio 0.01 and Nesterov for AdamP).
SPD (:mod:`pipeline.optimizers.spd`) gets two groups: the backbone with
``spd_lambda`` and the new head with ``head_spd_lambda`` (0 by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline import compat
from pipeline.optimizers.spd import SPD
from pipeline.training.settings import effective_lr

compat.apply()
from timm.optim import create_optimizer_v2, param_groups_weight_decay  # noqa: E402


@dataclass(frozen=True)
class OptimizerInfo:
    """What is recorded next to every run."""

    name: str
    lr: float
    effective_lr: float | None  # lr / (1 - momentum) for SGD and SGDP (Li et al. 2020); None for adaptive methods
    trainable_params: int
    frozen_params: int


def _kernel(device: torch.device, fused_ok: bool) -> dict:
    """torch's fused kernels on CUDA where the optimizer has them, else its foreach ones."""
    return {"fused": True} if fused_ok and device.type == "cuda" else {"foreach": True}


def _weight_decay_groups(model: nn.Module, weight_decay: float) -> list:
    """Trainable parameters; with weight decay, timm's two groups.

    No decay on 1-D tensors (norms, biases) and on ``model.no_weight_decay()``.
    """
    if weight_decay > 0:
        skip = set(getattr(model, "no_weight_decay", lambda: set())())
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return [p for p in model.parameters() if p.requires_grad]


def spd_groups(model: nn.Module, head: tuple[str, ...], lam: float, head_lam: float) -> list[dict]:
    """Named SPD groups: backbone (lambda) and head (its own lambda, 0 = plain Adam, no anchor)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    body = [(n, p) for n, p in named if n not in head]
    new_head = [(n, p) for n, p in named if n in head]
    groups = [{"params": [p for _, p in g], "param_names": [n for n, _ in g], "lam": lam_g}
              for g, lam_g in ((body, lam), (new_head, head_lam)) if g]
    return groups


def build_optimizer(model: nn.Module, settings: dict, head: tuple[str, ...] = (),
                    device: torch.device | None = None) -> tuple[torch.optim.Optimizer, OptimizerInfo]:
    """The optimizer ``settings`` ask for, over the model's trainable parameters."""
    device = device or next(model.parameters()).device
    name, lr, wd = settings["optimizer"], float(settings["lr"]), float(settings.get("weight_decay", 0.0))
    params = _weight_decay_groups(model, wd)
    if name == "adamw":
        opt = create_optimizer_v2(params, opt="adamw", lr=lr, weight_decay=wd, betas=tuple(settings["betas"]),
                                  **_kernel(device, True))
    elif name == "sgd":
        opt = create_optimizer_v2(params, opt="momentum", lr=lr, weight_decay=wd, momentum=float(settings["momentum"]),
                                  **_kernel(device, True))
    elif name == "adamp":
        opt = create_optimizer_v2(params, opt="adamp", lr=lr, weight_decay=wd, betas=tuple(settings["betas"]),
                                  delta=float(settings["delta"]), wd_ratio=float(settings["wd_ratio"]),
                                  nesterov=bool(settings["nesterov"]))
    elif name == "sgdp":
        opt = create_optimizer_v2(params, opt="sgdp", lr=lr, weight_decay=wd, momentum=float(settings["momentum"]),
                                  delta=float(settings["delta"]), wd_ratio=float(settings["wd_ratio"]),
                                  nesterov=bool(settings["nesterov"]))
    elif name == "spd":
        if wd > 0:
            raise ValueError("spd: weight_decay is not part of SPD (spd_lambda is its regulariser); set it to 0")
        opt = SPD(spd_groups(model, head, float(settings["spd_lambda"]), float(settings["head_spd_lambda"])),
                  lr=lr, betas=tuple(settings["betas"]))
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return opt, OptimizerInfo(name, lr, effective_lr(settings), n_train, n_all - n_train)
