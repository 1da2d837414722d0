"""Pooled penultimate features of every split, and the file that holds them.

The file holds, per split, ``<split>/features`` (float32 [N, D]), ``<split>/labels`` and
``<split>/domain`` (int64 codes into the ``domains`` list stored in its metadata). The network runs
in eval mode without augmentation, so LP and LP-FT see exactly these features.

With a train augmentation (``linear_probe.train_augment: true``) the train split also gets
``<train>/features_augmented``: one random view of every image under the run's train transform
(the dataset's ``train_augment``: :class:`TrainView`), network in eval mode, drawn in order from a
CPU generator seeded with :data:`VIEW_SEED`. That is transfer_learning's LP for LP-FT: its
``linprobe`` features are one pass over the train loader with the train transform
(AnanyaKumar/transfer_learning@13c3e2b:scripts/run_adaptation_experiments.py:424, 1707-1726;
unlabeled_extrapolation/extract_features.py:154-163, 176-177), unseeded there, seeded here.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pipeline.data.augment import Images, TrainTransform
from pipeline.data.shards import PreparedDataset
from pipeline.io import progress
from pipeline.models.inference import predict_logits
from pipeline.models.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)
VIEW_SEED = 0   # the augmented train view's draws (one view per image, shared by every seed's LP)
AUGMENTED = "features_augmented"


@dataclass(frozen=True)
class TrainView:
    """The run's train transform (:func:`~pipeline.models.transforms.train_transform`: the dataset's
    ``train_augment`` at the model's input size) as an inference transform: one random view per image of each
    batch, drawn in order from ``generator`` (the loop's training crop is the same :class:`TrainTransform`)."""

    train: TrainTransform
    generator: torch.Generator
    memory_format: torch.memory_format = field(default=torch.contiguous_format)

    def __call__(self, images: Images) -> torch.Tensor:
        return replace(self.train, memory_format=self.memory_format)(images, self.generator)


def extract_features(model, data: PreparedDataset, batch_size: int = 256, precision: str = "auto",
                     train_augment: Mapping | None = None, augmented: bool = False
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of the features file (the model's eval transform); ``augmented``: also the train
    split's augmented view under ``train_augment`` (the dataset's, defaults filled in)."""
    transform = eval_transform(model)
    domains = sorted(data.metadata["domain"].astype(str).unique())
    code = {d: i for i, d in enumerate(domains)}
    tensors: dict[str, torch.Tensor] = {}
    for name in progress(data.split_names, desc="features"):
        split = data.split(name)
        tensors[f"{name}/features"] = predict_logits(model, split.images, transform, batch_size,
                                                     precision).float().contiguous()
        tensors[f"{name}/labels"] = torch.from_numpy(split.labels)
        tensors[f"{name}/domain"] = torch.from_numpy(
            np.array([code[d] for d in split.metadata["domain"].astype(str)], dtype=np.int64))
    if augmented:
        train = data.info.get("train_split", "train")
        if train_augment is None:
            raise ValueError("extract_features: augmented needs the dataset's train_augment")
        view = TrainView(train_transform(model, train_augment), torch.Generator().manual_seed(VIEW_SEED))
        tensors[f"{train}/{AUGMENTED}"] = predict_logits(model, data.split(train).images, view, batch_size,
                                                         precision).float().contiguous()
    meta = {"splits": json.dumps(data.split_names), "domains": json.dumps(domains),
            "num_classes": str(data.num_classes), "train_split": data.info.get("train_split", "train"),
            "val_split": data.info.get("val_split", "id_val")}
    return tensors, meta


def load_features(path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """{split: {features, labels, domain}} and the file's metadata (domains decoded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        flat = {k: f.get_tensor(k) for k in f.keys()}
    meta["splits"], meta["domains"] = json.loads(meta["splits"]), json.loads(meta["domains"])
    meta["num_classes"] = int(meta["num_classes"])
    out = {s: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{s}/")} for s in meta["splits"]}
    return out, meta
