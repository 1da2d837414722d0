"""Heavy-ball SGD, v <- mu v + g, theta <- theta - lr v (timm's ``"sgd"`` would be Nesterov)."""
from __future__ import annotations

import torch

from pipeline import compat
from pipeline.methods.groups import kernel_options

compat.apply()
from timm.optim import create_optimizer_v2  # noqa: E402


def build(groups: list[dict], settings: dict, device: torch.device) -> torch.optim.Optimizer:
    return create_optimizer_v2(groups, opt="momentum", lr=float(settings["lr"]),
                               weight_decay=float(settings["weight_decay"]), momentum=float(settings["momentum"]),
                               **kernel_options(device))
