"""AdamW from timm's factory (torch's foreach kernel on CPU, the fused one on CUDA)."""
from __future__ import annotations

import torch

from pipeline import compat
from pipeline.methods.groups import kernel_options

compat.apply()
from timm.optim import create_optimizer_v2  # noqa: E402


def build(groups: list[dict], settings: dict, device: torch.device) -> torch.optim.Optimizer:
    return create_optimizer_v2(groups, opt="adamw", lr=float(settings["lr"]),
                               weight_decay=float(settings["weight_decay"]), betas=tuple(settings["betas"]),
                               **kernel_options(device))
