"""Per-split metric rows: accuracy per domain, plus each dataset's official metrics.

* Class subsets: a domain that covers only some classes (ImageNet-R and -A: 200 of
  the 1000) is scored as in their papers, by the argmax over its classes only
  (``info.json``: ``"class_subsets": {domain: [class indices]}``).
* Official metrics (``info.json``: ``"official_eval"``): WILDS datasets are scored
  by their own ``eval`` (worst-group accuracy, worst region, macro F1, ...),
  which adds tidy rows with ``domain = all`` and the WILDS metric names.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.shards import PreparedDataset, SplitData
from pipeline.evaluation.metrics import accuracy_rows


def predictions(data: PreparedDataset, split: SplitData, logits: torch.Tensor) -> np.ndarray:
    """Predicted class per image; restricted to the domain's class subset where the dataset defines one."""
    pred = logits.argmax(1).numpy()
    subsets = data.info.get("class_subsets") or {}
    if subsets:
        domains = split.metadata["domain"].astype(str).to_numpy()
        for domain, classes in subsets.items():
            mask = domains == domain
            if mask.any():
                idx = torch.as_tensor(classes, dtype=torch.long)
                pred[mask] = idx[logits[torch.as_tensor(mask)][:, idx].argmax(1)].numpy()
    return pred


def split_rows(data: PreparedDataset, name: str, logits: torch.Tensor) -> list[dict]:
    """Tidy metric rows (without ids) of split ``name`` from the model's logits on it."""
    split = data.split(name)
    if len(logits) != len(split):
        raise ValueError(f"{name}: {len(logits)} logits for {len(split)} images")
    pred = predictions(data, split, logits)
    rows = accuracy_rows(pred, split.labels, split.metadata["domain"].to_numpy(), name)
    spec = data.info.get("official_eval")
    if spec and name in spec.get("splits", data.split_names):
        if spec["kind"] != "wilds":
            raise ValueError(f"{data.root}: unknown official_eval kind {spec['kind']!r}")
        from pipeline.evaluation.wilds_eval import wilds_rows

        rows += wilds_rows(data, name, split, pred, spec)
    return rows
