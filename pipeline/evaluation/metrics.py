"""Tidy metric rows: one row per model x split x domain x metric (x seed, alpha).

Every result file of the pipeline (LP, evaluate, WiSE-FT) is a CSV with
:data:`COLUMNS`, so the report concatenates them without reshaping.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["dataset", "model", "method", "hp", "seed", "alpha", "selection", "split", "domain", "metric",
           "value", "n", "config_hash"]
ALL_DOMAINS = "all"
STRING_COLUMNS = ["dataset", "model", "method", "hp", "selection", "split", "domain", "metric", "config_hash"]
SORT_COLUMNS = ["dataset", "model", "method", "hp", "seed", "selection", "alpha", "split", "domain", "metric"]


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
            df[col] = "" if col in ("selection", "hp") else np.nan
    return df[COLUMNS]


def read_tidy(paths: list[str]) -> pd.DataFrame:
    """Concatenate tidy metric CSVs, with stable dtypes, sorted."""
    # Read names as strings: a domain or config hash made of digits must not turn into a number.
    frames = [pd.read_csv(p, dtype=dict.fromkeys(STRING_COLUMNS, str), keep_default_na=False,
                          na_values={"alpha": [""], "value": [""], "n": [""], "seed": [""]}) for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("alpha", "value") else object) for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise ValueError(f"tidy metrics lack columns {missing} (files: {', '.join(paths[:3])}...)")
    df = df[COLUMNS].copy()
    df["seed"] = df["seed"].fillna(0).astype(int)
    df["alpha"] = df["alpha"].astype(float)
    df["value"] = df["value"].astype(float)
    return sort_results(df)


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(SORT_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)
