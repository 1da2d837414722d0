"""Per-split metric rows: accuracy and calibration per domain, plus each dataset's official metrics.

* Class subsets: a domain that covers only some classes (ImageNet-R and -A) is scored over its
  classes only (:func:`pipeline.evaluation.predictions.split_predictions`).
* Calibration: the top-label expected calibration error (metric ``ece``) per domain.
* Official metrics (``info.json``: ``"official_eval"``): WILDS datasets are scored
  by their own ``eval`` (worst-group accuracy, worst region, macro F1, ...),
  which adds tidy rows with ``domain = all`` and the WILDS metric names.
"""
from __future__ import annotations

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import accuracy_rows
from pipeline.evaluation.predictions import SplitPredictions, calibration_rows


def split_rows(data: PreparedDataset, name: str, p: SplitPredictions) -> list[dict]:
    """Tidy metric rows (without ids) of split ``name`` from a model's predictions on it."""
    split = data.split(name)
    rows = accuracy_rows(p.pred, split.labels, p.domains, name) + calibration_rows(p, name)
    spec = data.info.get("official_eval")
    if spec and name in spec.get("splits", data.split_names):
        if spec["kind"] != "wilds":
            raise ValueError(f"{data.root}: unknown official_eval kind {spec['kind']!r}")
        from pipeline.evaluation.wilds_eval import wilds_rows

        rows += wilds_rows(data, name, split, p.pred, spec)
    return rows
