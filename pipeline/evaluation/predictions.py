"""Per-example predictions: computed once per model and split, saved compactly, read by the report.

Every evaluation stage (``linear_probe``, ``zeroshot``, ``evaluate``, ``wise_ft``, ``soup``) writes
one ``.npz`` next to its ``metrics.csv``; the report bootstraps intervals and paired comparisons
from them, and :mod:`pipeline.evaluation.submission` writes WILDS-style prediction files from them.
A file holds one or more *entries* (one model each: a run, a WiSE-FT alpha, a soup):

==============================  =========================================================
``entries``                     one JSON object per entry: its name and tidy ids (dataset,
                                model, method, hp, seed, alpha; :mod:`...metrics`)
``<entry>/<split>/pred``        predicted class (int32), over the domain's class subset
``<entry>/<split>/confidence``  softmax probability of that class (float16)
``<entry>/<split>/correct``     prediction == label (bool)
``<split>/domain``              index into ``<split>/domains`` per example (uint16)
``<split>/domains``             the split's domain names
==============================  =========================================================

Examples are in the prepared split's order, the same for every model of a dataset, which is
what pairs two models' predictions example by example. The file loads without pickle.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import ALL_DOMAINS
from pipeline.io import save_arrays

# Bins of the expected calibration error (Guo et al. 2017; the WiSE-FT and soups papers' setting).
ECE_BINS = 15
SINGLE = "model"   # the entry name of a file with one model


@dataclass(frozen=True)
class SplitPredictions:
    """One model's predictions on one split, in the split's example order."""

    pred: np.ndarray         # int
    confidence: np.ndarray   # float, probability of the predicted class
    correct: np.ndarray      # bool
    domains: np.ndarray      # str, per example

    def __len__(self) -> int:
        return len(self.pred)


def split_predictions(data: PreparedDataset, name: str, logits: torch.Tensor) -> SplitPredictions:
    """Predicted class and its probability per image of split ``name``.

    A domain that covers only some classes (ImageNet-R and -A: 200 of the 1000; ``info.json``
    ``class_subsets``) is scored as in their papers: argmax and softmax over its classes only.
    """
    split = data.split(name)
    if len(logits) != len(split):
        raise ValueError(f"{name}: {len(logits)} logits for {len(split)} images")
    logits = logits.float()
    prob = logits.softmax(1)
    confidence, pred = prob.max(1)
    domains = split.metadata["domain"].astype(str).to_numpy()
    for domain, classes in (data.info.get("class_subsets") or {}).items():
        mask = torch.as_tensor(domains == domain)
        if mask.any():
            idx = torch.as_tensor(classes, dtype=torch.long)
            sub_conf, sub_pred = logits[mask][:, idx].softmax(1).max(1)
            confidence[mask], pred[mask] = sub_conf, idx[sub_pred]
    pred_np = pred.numpy()
    return SplitPredictions(pred_np, confidence.numpy(), pred_np == np.asarray(split.labels), domains)


def calibration_rows(p: SplitPredictions, split: str) -> list[dict]:
    """Top-label expected calibration error (``torchmetrics``, 15 equal-width bins), whole split and per domain."""
    from torchmetrics.functional.classification import binary_calibration_error

    def ece(mask: np.ndarray) -> float:
        conf = torch.as_tensor(p.confidence[mask], dtype=torch.float32)
        return float(binary_calibration_error(conf, torch.as_tensor(p.correct[mask], dtype=torch.long),
                                              n_bins=ECE_BINS, norm="l1"))

    everything = np.ones(len(p), dtype=bool)
    rows = [{"split": split, "domain": ALL_DOMAINS, "metric": "ece", "value": ece(everything), "n": len(p)}]
    for d in sorted(set(p.domains)):
        mask = p.domains == d
        rows.append({"split": split, "domain": d, "metric": "ece", "value": ece(mask), "n": int(mask.sum())})
    return rows


def entry_ids(dataset: str, model: str, method: str, hp: str, seed: int, alpha: float | None = None) -> dict:
    """The tidy ids of an entry (as in its metric rows), by which the report finds it."""
    return {"dataset": dataset, "model": model, "method": method, "hp": hp, "seed": int(seed),
            "alpha": None if alpha is None or math.isnan(alpha) else float(alpha)}


def alpha_entry(alpha: float) -> str:
    return f"alpha{alpha:g}"


def save_predictions(path: str | Path, entries: dict[str, tuple[dict, dict[str, SplitPredictions]]]) -> None:
    """Write ``{entry: (ids, {split: predictions})}`` as one ``.npz`` (format: module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    index = []
    for entry, (ids, splits) in entries.items():
        index.append(json.dumps({"entry": entry, **ids}, sort_keys=True))
        for split, p in splits.items():
            # Classes fit int32 and probabilities need no more than float16's 3 digits here.
            arrays[f"{entry}/{split}/pred"] = p.pred.astype(np.int32)
            arrays[f"{entry}/{split}/confidence"] = p.confidence.astype(np.float16)
            arrays[f"{entry}/{split}/correct"] = p.correct.astype(bool)
            if f"{split}/domain" not in arrays:
                names, codes = np.unique(p.domains, return_inverse=True)
                arrays[f"{split}/domains"] = names.astype(str)
                arrays[f"{split}/domain"] = codes.astype(np.uint16)
    arrays["entries"] = np.asarray(index, dtype=str)
    save_arrays(path, arrays)


class PredictionFile:
    """A saved predictions file, read lazily (``np.load`` without pickle)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._npz = np.load(self.path, allow_pickle=False)
        self.entries = [json.loads(e) for e in self._npz["entries"]]

    def splits(self, entry: str = SINGLE) -> list[str]:
        prefix = f"{entry}/"
        return sorted({k[len(prefix):].rsplit("/", 1)[0] for k in self._npz.files
                       if k.startswith(prefix) and k.endswith("/pred")})

    def correct(self, entry: str, split: str) -> np.ndarray:
        return self._npz[f"{entry}/{split}/correct"]

    def get(self, entry: str, split: str) -> SplitPredictions:
        names = self._npz[f"{split}/domains"]
        return SplitPredictions(self._npz[f"{entry}/{split}/pred"], self._npz[f"{entry}/{split}/confidence"],
                                self.correct(entry, split), names[self._npz[f"{split}/domain"]])

    def domain_codes(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(domain names, per-example index into them) of a split."""
        return self._npz[f"{split}/domains"], self._npz[f"{split}/domain"]

    def all(self, entry: str = SINGLE) -> dict[str, SplitPredictions]:
        return {s: self.get(entry, s) for s in self.splits(entry)}
