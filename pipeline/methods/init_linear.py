"""Head initialisation ``linear_default``: a fresh head as ``nn.Linear`` initialises itself.

transfer_learning's fine-tunes start from ``nn.Linear(features, K)`` built after
``torch.manual_seed(seed)`` (AnanyaKumar/transfer_learning@13c3e2b:unlabeled_extrapolation/models/clip_model.py:180-183,
baseline_train.py:216, 831-834), i.e. PyTorch's default: ``kaiming_uniform_(weight, a=sqrt(5))``, which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then the bias from the same interval. The same two calls on the same
global generator here, so under one seed the head equals a freshly built ``nn.Linear`` (a 1x1-convolution
head draws the same numbers: ``nn.Conv2d`` uses the same rule with fan_in = D). Like ``random``, the draw
is seeded per run, so every run of one seed starts from the same head.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.backbone import head_names


def linear_default_(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """``nn.Linear.reset_parameters`` on these two tensors, in place (the same calls, in the same order)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


def init_head(model: nn.Module, inputs: dict) -> None:
    w_name, b_name = head_names(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        linear_default_(params[w_name], params[b_name])


def pretrained_head(inputs: dict) -> dict[str, torch.Tensor] | None:
    """None: the pretrained model never had this head, so WiSE-FT keeps the fine-tuned one."""
    return None
