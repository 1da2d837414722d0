"""Policy ``layer_decay``: layer-wise learning-rate decay for fine-tuning (ELECTRA, BEiT; used for ViTs).

Layer i of L (timm's grouping of the model: ``group_matcher``, embedding first, head last) trains
at ``lr * layer_decay ** (L - 1 - i)``. The grouping and the scales are timm's own
(:func:`timm.optim.param_groups_layer_decay`, what ``create_optimizer_v2(layer_decay=...)`` uses);
here they become each tensor's ``lr_scale``, so they compose with the other policies.
"""
from __future__ import annotations

from torch import nn

from pipeline import compat

compat.apply()
from timm.optim import param_groups_layer_decay  # noqa: E402


def apply(model: nn.Module, settings: dict, lr_scale: dict[str, float]) -> dict:
    decay = float(settings["layer_decay"])
    if decay == 1.0:
        return {}
    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=decay)
    scale = {id(p): float(g["lr_scale"]) for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if id(p) in scale:
            lr_scale[name] = lr_scale.get(name, 1.0) * scale[id(p)]
    return {"layer_decay": decay, "layer_decay_min_scale": min(scale.values(), default=1.0)}
