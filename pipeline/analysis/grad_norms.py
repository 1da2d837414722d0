"""Per-layer gradient norms at the start of fine-tuning (Kumar et al., ICLR 2024, Fig. 2-style).

The paper's explanation of why SGD lags AdamW on modern backbones is that the
embedding layer's gradients are much larger than the rest of the network's at
the pretrained weights, so one SGD learning rate cannot suit both. This module
measures the per-group L2 gradient norm of the cross-entropy on one batch, using
the same layer groups as freeze-embed (:func:`pipeline.models.layers.layer_groups`).
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import layer_groups

COLUMNS = ["group", "index", "n_params", "grad_norm", "grad_norm_per_param", "param_norm", "embed"]


def layer_grad_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, embed_k: int = 2) -> pd.DataFrame:
    """One row per layer group: gradient and weight norms of the batch loss at the current weights.

    ``images`` are float and already normalised. The model is put in eval mode:
    fine-tuning here runs with BatchNorm in eval mode (pretrained statistics), and
    eval mode also turns off dropout / drop-path, so the gradient is the one the
    first fine-tuning step sees, deterministic, and BN running stats are not
    updated. The previous train/eval flags are restored afterwards. Gradients are
    taken for every parameter, frozen ones included (requires_grad is restored),
    via ``torch.autograd.grad`` so nothing accumulates into ``.grad``; all
    ``.grad`` are cleared on return. ``grad_norm_per_param`` is NaN for empty groups.
    """
    groups = layer_groups(model)
    params = dict(model.named_parameters())
    modes = {m: m.training for m in model.modules()}
    flags = {n: p.requires_grad for n, p in params.items()}
    device = next(iter(params.values())).device
    try:
        model.eval()
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            names = list(params)
            grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)))
    finally:
        for m, training in modes.items():
            m.train(training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None

    rows = []
    with torch.no_grad():
        for i, (group, members) in enumerate(groups):
            n_params = sum(params[n].numel() for n in members)
            # A parameter off the loss path (unused) has zero gradient, not a missing one.
            g2 = sum(float(grads[n].double().pow(2).sum()) for n in members if grads[n] is not None)
            w2 = sum(float(params[n].detach().double().pow(2).sum()) for n in members)
            gn = math.sqrt(g2)
            rows.append({"group": group, "index": i, "n_params": n_params, "grad_norm": gn,
                         "grad_norm_per_param": gn / math.sqrt(n_params) if n_params else math.nan,
                         "param_norm": math.sqrt(w2), "embed": i < embed_k})
    return pd.DataFrame(rows, columns=COLUMNS)
