"""Head initialisation ``random``: a fresh, small classifier.

timm's own init of a new head (tf_ models: variance scaling) starts the loss near 5.7 on
ten classes; N(0, 0.01^2) weights and zero biases start it at log(K). The draw uses torch's
global generator, seeded per run, so every run of one seed starts from the same head (which
is what lets model soups average them).
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.backbone import head_names


def init_head(model: nn.Module, inputs: dict) -> None:
    w_name, b_name = head_names(model)
    state = model.state_dict()
    model.load_state_dict({w_name: torch.randn_like(state[w_name]) * 0.01,
                           b_name: torch.zeros_like(state[b_name])}, strict=False)


def pretrained_head(inputs: dict) -> dict[str, torch.Tensor] | None:
    """None: the pretrained model never had this head, so WiSE-FT keeps the fine-tuned one."""
    return None
