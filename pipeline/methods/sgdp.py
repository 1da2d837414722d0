"""SGDP (Heo et al. 2021): timm's implementation, heavy-ball by default like the official package.

delta 0.1, wd_ratio 0.1 and no Nesterov are the official defaults, set explicitly (timm's
factory turns Nesterov on).
"""
from __future__ import annotations

import torch

from pipeline import compat

compat.apply()
from timm.optim import create_optimizer_v2  # noqa: E402


def build(groups: list[dict], settings: dict, device: torch.device) -> torch.optim.Optimizer:
    return create_optimizer_v2(groups, opt="sgdp", lr=float(settings["lr"]),
                               weight_decay=float(settings["weight_decay"]), momentum=float(settings["momentum"]),
                               delta=float(settings["delta"]), wd_ratio=float(settings["wd_ratio"]),
                               nesterov=bool(settings["nesterov"]))
