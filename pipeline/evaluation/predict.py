"""Batched inference over prepared splits."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.data.shards import PreparedDataset
from pipeline.data.tensors import batches, to_float
from pipeline.evaluation.official import split_rows


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, mean, std, batch_size: int = 256) -> torch.Tensor:
    """Logits (or features, for a headless model) of uint8 NHWC images, model in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_float(images[sl], mean, std).to(device)).float().cpu() for sl in batches(len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def eval_splits(data: PreparedDataset) -> list[str]:
    """Splits a model is evaluated on: every split but the training one."""
    return [s for s in data.split_names if s != data.info.get("train_split", "train")]


def evaluate_model(model: nn.Module, data: PreparedDataset, mean, std, batch_size: int = 256,
                   splits: list[str] | None = None) -> list[dict]:
    """Metric rows (split x domain x metric) of ``model`` on the evaluation splits.

    A split stored once under two names (an alias) is predicted once.
    """
    names = splits or eval_splits(data)
    shared = {data.physical(n) for n in names if data.physical(n) != n}
    cache: dict[str, torch.Tensor] = {}
    rows: list[dict] = []
    for name in names:
        stored = data.physical(name)
        logits = cache.get(stored)
        if logits is None:
            logits = predict_logits(model, data.split(stored).images, mean, std, batch_size)
            if stored in shared:
                cache[stored] = logits
        rows += split_rows(data, name, logits)
    return rows
