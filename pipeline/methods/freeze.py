"""Policy ``freeze``: freeze the bottom ``k`` layer groups (freeze-embed SGD: k = 2, Kumar et al. 2024).

The layer groups per architecture family are :func:`pipeline.models.layers.layer_groups`;
``freeze: embed`` is k = 2 (the embedding), ``patch_embed`` k = 1, ``none`` k = 0.
"""
from __future__ import annotations

from torch import nn

from pipeline.models.layers import freeze_bottom, resolve_freeze


def apply(model: nn.Module, settings: dict, lr_scale: dict[str, float]) -> dict:
    """Set ``requires_grad=False`` on the frozen groups; returns what run.json records."""
    report = freeze_bottom(model, resolve_freeze(settings["freeze"]))
    return {"frozen_fraction": report.fraction, "frozen_groups": list(report.frozen_groups)}
