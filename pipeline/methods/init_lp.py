"""Head initialisation ``lp`` (LP-FT, Kumar et al. 2022): start from the linear probe's head.

The probe's head is a matrix ``weight`` [K, D] and ``bias`` [K] for raw pooled features
(:mod:`pipeline.training.linear_probe`); it loads into any classifier timm builds over those
features: a linear layer, or a 1x1 convolution (BiT / ResNetV2 heads, [K, D, 1, 1]). Both WiSE-FT
endpoints then carry a head for these classes, so the head is interpolated too.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.backbone import head_names, load_state


def fit_head(head: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, source: str = "LP head"
             ) -> dict[str, torch.Tensor]:
    """``head`` reshaped to a classifier's ``weight`` and ``bias`` shapes (same values, e.g. [K, D] -> [K, D, 1, 1])."""
    w, b = head["weight"], head["bias"]
    if w.numel() != weight.numel() or w.shape[0] != weight.shape[0] or b.shape != bias.shape:
        raise ValueError(f"{source} {tuple(w.shape)} does not fit classifier {tuple(weight.shape)}")
    return {"weight": w.reshape(weight.shape).to(weight.dtype), "bias": b.to(bias.dtype)}


def init_head(model: nn.Module, inputs: dict) -> None:
    w_name, b_name = head_names(model)
    state = model.state_dict()
    head = fit_head(load_state(inputs["lp_head"]), state[w_name], state[b_name], f"LP head {inputs['lp_head']}")
    model.load_state_dict({w_name: head["weight"], b_name: head["bias"]}, strict=False)


def pretrained_head(inputs: dict) -> dict[str, torch.Tensor] | None:
    """theta_0's head for WiSE-FT: the LP head the fine-tune started from."""
    return load_state(inputs["lp_head"])
