"""AdamP (Heo et al. 2021): timm's implementation of the official algorithm.

The official package's defaults are set explicitly (delta 0.1, wd_ratio 0.1, no Nesterov),
since timm's factory defaults differ (wd_ratio 0.01 and Nesterov on).
"""
from __future__ import annotations

import torch

from pipeline import compat

compat.apply()
from timm.optim import create_optimizer_v2  # noqa: E402


def build(groups: list[dict], settings: dict, device: torch.device) -> torch.optim.Optimizer:
    return create_optimizer_v2(groups, opt="adamp", lr=float(settings["lr"]),
                               weight_decay=float(settings["weight_decay"]), betas=tuple(settings["betas"]),
                               delta=float(settings["delta"]), wd_ratio=float(settings["wd_ratio"]),
                               nesterov=bool(settings["nesterov"]))
