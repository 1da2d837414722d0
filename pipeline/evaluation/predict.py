"""A model's metric rows on the evaluation splits of a prepared dataset."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.official import split_rows
from pipeline.models.inference import predict_logits


def eval_splits(data: PreparedDataset) -> list[str]:
    """Splits a model is evaluated on: every split but the training one."""
    return [s for s in data.split_names if s != data.info.get("train_split", "train")]


def evaluate_model(model: nn.Module, data: PreparedDataset, mean, std, batch_size: int = 256,
                   splits: list[str] | None = None, precision: str = "auto") -> list[dict]:
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
            logits = predict_logits(model, data.split(stored).images, mean, std, batch_size, precision)
            if stored in shared:
                cache[stored] = logits
        rows += split_rows(data, name, logits)
    return rows
