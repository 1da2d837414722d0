"""Tidy metric rows: one row per model x split x domain x metric (x seed, alpha).

Every result file of the pipeline (LP, evaluate, WiSE-FT) is a CSV with
:data:`COLUMNS`, so the report concatenates them without reshaping.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["dataset", "model", "method", "seed", "alpha", "selection", "split", "domain", "metric", "value",
           "n", "config_hash"]
ALL_DOMAINS = "all"


def accuracy_rows(pred: np.ndarray, labels: np.ndarray, domains: np.ndarray, split: str) -> list[dict]:
    """Accuracy over the whole split (domain ``all``) and per domain."""
    pred, labels, domains = np.asarray(pred), np.asarray(labels), np.asarray(domains).astype(str)
    if pred.shape != labels.shape:
        raise ValueError(f"{split}: {pred.shape} predictions for {labels.shape} labels")
    correct = pred == labels
    rows = [{"split": split, "domain": ALL_DOMAINS, "metric": "acc", "value": float(correct.mean()), "n": len(correct)}]
    for d in sorted(set(domains)):
        mask = domains == d
        rows.append({"split": split, "domain": d, "metric": "acc", "value": float(correct[mask].mean()),
                     "n": int(mask.sum())})
    return rows


def tidy(rows: list[dict], **ids) -> pd.DataFrame:
    """Stamp identifying columns (dataset, model, method, seed, config_hash, ...) onto rows."""
    df = pd.DataFrame([{**ids, **r} for r in rows])
    for col in COLUMNS:
        if col not in df:
            df[col] = "" if col == "selection" else np.nan
    return df[COLUMNS]
