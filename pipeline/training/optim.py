"""Optimizers from timm's factory, configured explicitly from a method's settings.

timm builds the parameter groups (no weight decay on norms, biases and
``model.no_weight_decay()`` tensors such as position embeddings) and picks
torch's foreach implementations. Defaults that differ between timm and the
papers are set explicitly here, never inherited.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline import compat

compat.apply()
from timm.optim import create_optimizer_v2  # noqa: E402


@dataclass(frozen=True)
class OptimizerInfo:
    """What is recorded next to every run."""

    name: str
    lr: float
    effective_lr: float | None  # lr / (1 - momentum) for SGD (Li et al. 2020); None for adaptive methods
    trainable_params: int
    frozen_params: int


def build_optimizer(model: nn.Module, settings: dict) -> tuple[torch.optim.Optimizer, OptimizerInfo]:
    """The optimizer a method's settings ask for, over the model's trainable parameters."""
    name, lr, wd = settings["optimizer"], float(settings["lr"]), float(settings.get("weight_decay", 0.0))
    if name == "adamw":
        opt = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=wd, betas=tuple(settings["betas"]),
                                  foreach=True)
        effective = None
    elif name == "sgd":
        momentum = float(settings["momentum"])
        # timm's "sgd" is Nesterov; the papers' FT baseline is heavy-ball momentum ("momentum" in timm).
        opt = create_optimizer_v2(model, opt="momentum", lr=lr, weight_decay=wd, momentum=momentum, foreach=True)
        effective = lr / (1.0 - momentum)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return opt, OptimizerInfo(name, lr, effective, n_train, n_all - n_train)
