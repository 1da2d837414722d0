"""Effective robustness: OOD accuracy beyond what a model's ID accuracy predicts.

Taori et al. 2020 and Miller et al. 2021 found that, across many models, OOD accuracy is close
to a linear function of ID accuracy once both are put on logit axes; the WiSE-FT paper plots
its models against that line. Here the line is fitted per dataset over every valid table row
(zero-shot, LP, each method, soups, WiSE-FT; every model) with ``scipy.stats.linregress`` on
``logit(ID), logit(OOD)`` of the headline quantities, and a row's *effective robustness* is its
OOD accuracy minus the line's OOD accuracy at its ID accuracy (``er``, a fraction; the tables
show points). The fitted coefficients are written to ``effective_robustness.csv``.
A dataset with fewer than three points, or points that all share one ID accuracy, has no fit.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special, stats

from pipeline.reporting.aggregate import headline

FIT_KINDS = ("zeroshot", "lp", "ft", "soup", "wise_ft")
FIT_COLUMNS = ["dataset", "id_quantity", "ood_quantity", "slope", "intercept", "r", "n_points"]
# Accuracies of exactly 0 or 1 have no logit: they are clipped this close to the edge.
EPS = 1e-4


def logit(p) -> np.ndarray:
    return special.logit(np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS))


def points(summary: pd.DataFrame, dataset: str, id_q: str, ood_q: str) -> pd.DataFrame:
    """One point per valid table row of a dataset: model, row, kind, label, id, ood (means over seeds)."""
    s = summary[(summary["dataset"] == dataset) & summary["kind"].isin(FIT_KINDS)]
    keys = ["model", "row", "kind", "method", "label"]
    wide = s[s["quantity"].isin([id_q, ood_q])].pivot_table(index=keys, columns="quantity", values="mean",
                                                            sort=False)
    if id_q not in wide or ood_q not in wide:
        return pd.DataFrame(columns=[*keys, "id", "ood"])
    return wide.rename(columns={id_q: "id", ood_q: "ood"})[["id", "ood"]].dropna().reset_index()


def fit_line(pts: pd.DataFrame) -> tuple[float, float, float]:
    """(slope, intercept, r) of logit(OOD) on logit(ID); NaNs when the points cannot determine a line."""
    if len(pts) < 3 or np.ptp(logit(pts["id"])) == 0:
        return math.nan, math.nan, math.nan
    res = stats.linregress(logit(pts["id"]), logit(pts["ood"]))
    return float(res.slope), float(res.intercept), float(res.rvalue)


def predicted_ood(id_acc, slope: float, intercept: float) -> np.ndarray:
    return special.expit(intercept + slope * logit(id_acc))


def effective_robustness(summary: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit per dataset, summary rows of quantity ``er``)."""
    fits, er_rows = [], []
    for dataset in dict.fromkeys(summary["dataset"]):
        id_q, ood_q = headline(cfg, dataset, "id"), headline(cfg, dataset, "ood")
        pts = points(summary, dataset, id_q, ood_q)
        slope, intercept, r = fit_line(pts)
        fits.append({"dataset": dataset, "id_quantity": id_q, "ood_quantity": ood_q, "slope": slope,
                     "intercept": intercept, "r": r, "n_points": len(pts)})
        if math.isnan(slope):
            continue
        er = pts["ood"].to_numpy() - predicted_ood(pts["id"].to_numpy(), slope, intercept)
        rows = summary[(summary["dataset"] == dataset) & (summary["quantity"] == ood_q)].set_index(["model", "row"])
        for p, value in zip(pts.itertuples(index=False), er):
            src = rows.loc[(p.model, p.row)]
            er_rows.append({"dataset": dataset, "model": p.model, "kind": p.kind, "method": p.method, "row": p.row,
                            "label": p.label, "hp": src["hp"], "quantity": "er", "mean": float(value),
                            "std": math.nan, "n": int(src["n"])})
    return pd.DataFrame(fits, columns=FIT_COLUMNS), pd.DataFrame(er_rows)
