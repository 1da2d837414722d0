"""Policy ``embed_lr``: the embedding layers at a reduced learning rate.

The freeze-embed paper's ablation (Kumar et al. 2024; ``embed_layer_lr_multiplier=0.2`` in its
results notebook, methods.md 1.4): instead of freezing the embedding (the bottom two layer
groups, the same ones ``freeze: embed`` freezes), train it with ``embed_lr_multiplier`` times
the learning rate. The factor multiplies the tensors' ``lr_scale``, so it composes with layer
decay; frozen tensors are not touched.
"""
from __future__ import annotations

from torch import nn

from pipeline.models.layers import FREEZE_ALIASES, layer_groups


def apply(model: nn.Module, settings: dict, lr_scale: dict[str, float]) -> dict:
    factor = float(settings["embed_lr_multiplier"])
    if factor == 1.0:
        return {}
    params = dict(model.named_parameters())
    embedding = [n for _, names in layer_groups(model)[:FREEZE_ALIASES["embed"]] for n in names]
    scaled = [n for n in embedding if params[n].requires_grad]
    for n in scaled:
        lr_scale[n] = lr_scale.get(n, 1.0) * factor
    return {"embed_lr_multiplier": factor, "embed_lr_params": sum(params[n].numel() for n in scaled)}
