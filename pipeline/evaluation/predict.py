"""A model's metric rows and per-example predictions on the evaluation splits of a prepared dataset."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.data.augment import EvalTransform
from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.official import split_rows
from pipeline.evaluation.predictions import SplitPredictions, split_predictions
from pipeline.models.backbone import default_device, load_state, model_skeleton
from pipeline.models.inference import predict_logits
from pipeline.models.state_files import check_fits


@dataclass
class Evaluation:
    """Tidy metric rows (without ids) and the predictions they were computed from, per split."""

    rows: list[dict] = field(default_factory=list)
    predictions: dict[str, SplitPredictions] = field(default_factory=dict)

    def value(self, split: str, metric: str = "acc") -> float:
        """A metric of a whole split (domain ``all``)."""
        return next(r["value"] for r in self.rows if r["split"] == split and r["domain"] == "all"
                    and r["metric"] == metric)


def eval_splits(data: PreparedDataset) -> list[str]:
    """Splits a model is evaluated on: every split but the training one."""
    return [s for s in data.split_names if s != data.info.get("train_split", "train")]


def score_logits(data: PreparedDataset, logits: dict[str, torch.Tensor]) -> Evaluation:
    """Rows and predictions from each split's logits."""
    out = Evaluation()
    for name, split_logits in logits.items():
        p = split_predictions(data, name, split_logits)
        out.predictions[name] = p
        out.rows += split_rows(data, name, p)
    return out


def evaluate_model(model: nn.Module, data: PreparedDataset, transform: EvalTransform, batch_size: int = 256,
                   splits: list[str] | None = None, precision: str = "auto") -> Evaluation:
    """Metric rows (split x domain x metric) and predictions of ``model`` on the evaluation splits, its inputs
    through ``transform`` (the model's eval transform, :func:`pipeline.models.transforms.eval_transform`).

    A split stored once under two names (an alias) is predicted once.
    """
    cache: dict[str, torch.Tensor] = {}
    logits = {}
    for name in splits or eval_splits(data):
        stored = data.physical(name)
        if stored not in cache:
            cache[stored] = predict_logits(model, data.split(stored).images, transform, batch_size, precision)
        logits[name] = cache[stored]
    return score_logits(data, logits)


def load_finetuned(model_cfg: Mapping, num_classes: int, path: str) -> nn.Module:
    """Architecture from the config, every tensor from the fine-tuned checkpoint (strict), on the job's device."""
    model = model_skeleton(model_cfg, num_classes)
    state = load_state(path)
    check_fits(state, model.state_dict(), path, "the configured model")
    model.load_state_dict(state, strict=True)
    return model.to(default_device()).eval()
