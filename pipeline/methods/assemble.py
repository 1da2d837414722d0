"""Assemble one run's method from its resolved settings through the registry.

The finetune stage calls :func:`init_head`, then :func:`assemble`; nothing here knows a
method by name, so a new optimizer, initialisation, regulariser or policy is a module plus a
registry entry (:mod:`pipeline.methods.registry`) and needs no change here or in the loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import nn

from pipeline.methods.groups import param_groups
from pipeline.methods.registry import INITS, OPTIMIZERS, layer_columns, switched_on


@dataclass
class Assembly:
    """A run's optimizer, its training hooks (regularisers), and the facts run.json records."""

    optimizer: torch.optim.Optimizer
    hooks: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    module: ModuleType | None = None   # the optimizer's registry module

    def layer_stats(self) -> dict[str, dict[str, float]]:
        """Per-tensor statistics for layers.csv: every registered column, NaN where this optimizer has none."""
        found = self.module.layer_stats(self.optimizer) if hasattr(self.module, "layer_stats") else {}
        return {name: {c: found.get(name, {}).get(c, math.nan) for c in layer_columns()}
                for group in self.optimizer.param_groups for name in group.get("param_names", [])}


def effective_lr(settings: dict) -> float | None:
    """lr / (1 - momentum) for momentum optimizers (SGD, SGDP; Li et al. 2020), None for adaptive ones."""
    if "momentum" in OPTIMIZERS[settings["optimizer"]].keys:
        return float(settings["lr"]) / (1.0 - float(settings["momentum"]))
    return None


def init_head(model: nn.Module, init: str, inputs: dict) -> None:
    """Initialise the classifier as the ``init`` entry says (reading its extra inputs, e.g. the LP head)."""
    INITS[init].load().init_head(model, inputs)


def pretrained_head(init: str, inputs: dict) -> dict[str, torch.Tensor] | None:
    """The head WiSE-FT's pretrained endpoint carries for runs of this ``init`` (None: keep the fine-tuned one)."""
    return INITS[init].load().pretrained_head(inputs)


def assemble(model: nn.Module, settings: dict, head: tuple[str, ...] = (), device: torch.device | None = None
             ) -> Assembly:
    """Apply the policies (freeze, lr scales), build the optimizer over the groups, and the regularisers.

    ``settings`` are resolved (every key present: :func:`pipeline.config.settings.resolve_settings`);
    ``head`` names the classifier's tensors; ``device`` defaults to the model's.
    """
    device = device or next(model.parameters()).device
    lr_scale: dict[str, float] = {}
    facts: dict = {}
    parts = switched_on(settings)
    for policy in (c for c in parts if c.kind == "policy"):
        facts |= policy.load().apply(model, settings, lr_scale)
    module = OPTIMIZERS[settings["optimizer"]].load()
    groups = param_groups(model, float(settings["lr"]), float(settings["weight_decay"]), lr_scale, head,
                          settings["weight_decay_scope"])
    optimizer = module.build(groups, settings, device)
    # Regularisers anchor at the weights as they are now: pretrained backbone, initialised head.
    hooks = [h for r in parts if r.kind == "regulariser" and (h := r.load().build(model, settings, head)) is not None]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    facts |= {"optimizer": settings["optimizer"], "lr": float(settings["lr"]), "effective_lr": effective_lr(settings),
              "trainable_params": n_train, "frozen_params": n_all - n_train,
              "regularisers": [type(h).__name__ for h in hooks]}
    facts.setdefault("frozen_fraction", (n_all - n_train) / n_all if n_all else 0.0)
    facts.setdefault("frozen_groups", [])
    return Assembly(optimizer, hooks, facts, module)
