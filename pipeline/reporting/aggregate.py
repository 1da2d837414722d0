"""Aggregate the tidy metric CSVs into per-method summaries and WiSE-FT curves.

Every result file shares :data:`pipeline.evaluation.metrics.COLUMNS`, so the
report concatenates them and works on one long frame. A *table row* is one
model-selection outcome of one method: the linear probe, each fine-tuning
method, WiSE-FT with alpha chosen on ID val, and (reported apart) WiSE-FT with
alpha chosen on OOD val (an oracle, not a valid selection rule).

Per seed, the ID score of a metric is its value on ``report.id_split`` (domain
``all``); the OOD score is the unweighted mean over the OOD domains of
``report.ood_split``, so a large domain cannot hide a weak one. A metric with
no per-domain rows (e.g. a worst-group score) falls back to domain ``all``.
Seeds are then summarised as mean, std (ddof=1, NaN for one seed) and n.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import ALL_DOMAINS, COLUMNS

STRING_COLUMNS = ["dataset", "model", "method", "selection", "split", "domain", "metric", "config_hash"]
SORT_COLUMNS = ["dataset", "model", "method", "seed", "selection", "alpha", "split", "domain", "metric"]
# Table row kinds, in table order; the selection column of the tidy rows decides the kind.
KINDS = ("lp", "ft", "wise_ft", "oracle")
SELECTION_KINDS = {"": "ft", "id_val": "wise_ft", "ood_val_oracle": "oracle"}
ROW_SUFFIX = {"lp": "", "ft": "", "wise_ft": "/wise_ft", "oracle": "/wise_ft_oracle"}
LP_METHOD = "lp"
SUMMARY_COLUMNS = ["dataset", "model", "kind", "method", "row", "label", "quantity", "mean", "std", "n"]


def read_tidy(paths: list[str]) -> pd.DataFrame:
    """Concatenate tidy metric CSVs, with stable dtypes, sorted."""
    # Read names as strings: a domain or config hash made of digits must not turn into a number.
    frames = [pd.read_csv(p, dtype={c: str for c in STRING_COLUMNS}, keep_default_na=False,
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


def read_runs(paths: list[str]) -> pd.DataFrame:
    """One row per run.json: ids, optimizer, lr, effective lr, selected epoch, train time."""
    rows = []
    for p in paths:
        run = json.loads(Path(p).read_text())
        settings = run.get("settings") or {}
        rows.append({"dataset": run["dataset"], "model": run["model"], "method": run["method"],
                     "seed": int(run["seed"]), "optimizer": settings.get("optimizer"), "lr": settings.get("lr"),
                     "effective_lr": run.get("effective_lr"), "selected_epoch": run.get("selected_epoch"),
                     "train_seconds": run.get("train_seconds")})
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "seed", "optimizer", "lr", "effective_lr",
                                       "selected_epoch", "train_seconds"])


def row_label(kind: str, method: str, labels: dict[str, str]) -> str:
    """Display name of a table row, e.g. ``FT (AdamW) + WiSE-FT (oracle)``."""
    base = labels.get(method, "LP" if method == LP_METHOD else method)
    return {"lp": base, "ft": base, "wise_ft": f"{base} + WiSE-FT", "oracle": f"{base} + WiSE-FT (oracle)"}[kind]


def assign_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``kind`` and ``row`` to tidy rows; drop rows of no table row (the WiSE-FT grid)."""
    kind = np.where(df["method"] == LP_METHOD, "lp", df["selection"].map(SELECTION_KINDS).fillna(""))
    out = df.assign(kind=kind)
    out = out[out["kind"] != ""]
    return out.assign(row=out["method"] + out["kind"].map(ROW_SUFFIX))


def per_seed_scores(df: pd.DataFrame, keys: list[str], id_split: str, ood_split: str) -> pd.DataFrame:
    """Long frame ``keys + [quantity, value]``: ``id_<m>``, ``ood_<m>`` and ``ood_<m>/<domain>`` per metric m."""
    q_id = df[(df["split"] == id_split) & (df["domain"] == ALL_DOMAINS)]
    q_id = q_id.assign(quantity="id_" + q_id["metric"])
    ood = df[df["split"] == ood_split]
    per_domain = ood[ood["domain"] != ALL_DOMAINS]
    q_dom = per_domain.assign(quantity="ood_" + per_domain["metric"] + "/" + per_domain["domain"])
    q_mean = per_domain.groupby(keys + ["metric"], sort=False)["value"].mean().reset_index()
    # Metrics without per-domain rows (scores defined on the whole split) use domain "all".
    whole = ood[ood["domain"] == ALL_DOMAINS].set_index(keys + ["metric"])
    whole = whole[~whole.index.isin(q_mean.set_index(keys + ["metric"]).index)].reset_index()
    q_ood = pd.concat([q_mean, whole[keys + ["metric", "value"]]], ignore_index=True)
    q_ood = q_ood.assign(quantity="ood_" + q_ood["metric"])
    cols = keys + ["quantity", "value"]
    return pd.concat([q_id[cols], q_ood[cols], q_dom[cols]], ignore_index=True)


def _mean_std_n(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = long.groupby(keys + ["quantity"], sort=False)["value"]
    return g.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()


def summarise(df: pd.DataFrame, report_cfg: dict, methods: list[str] | None = None) -> pd.DataFrame:
    """Mean/std/n over seeds of every quantity of every table row, in table order.

    WiSE-FT rows also get ``alpha`` (the chosen mixing weight) as a quantity.
    """
    id_split, ood_split = report_cfg.get("id_split", "id_test"), report_cfg.get("ood_split", "ood_test")
    rows = assign_rows(df)
    keys = ["dataset", "model", "kind", "method", "row"]
    long = per_seed_scores(rows, keys + ["seed"], id_split, ood_split)
    alphas = (rows[rows["kind"].isin(["wise_ft", "oracle"])].groupby(keys + ["seed"], sort=False)["alpha"]
              .first().reset_index().rename(columns={"alpha": "value"}).assign(quantity="alpha"))
    summary = _mean_std_n(pd.concat([long, alphas], ignore_index=True), keys)
    labels = report_cfg.get("labels") or {}
    summary["label"] = [row_label(k, m, labels) for k, m in zip(summary["kind"], summary["method"])]
    order = _method_order(summary["method"], methods)
    summary = summary.assign(_k=summary["kind"].map(KINDS.index), _m=summary["method"].map(order))
    summary = summary.sort_values(["dataset", "model", "_k", "_m", "quantity"], kind="stable")
    return summary[SUMMARY_COLUMNS].reset_index(drop=True)


def wise_ft_curves(df: pd.DataFrame, report_cfg: dict) -> pd.DataFrame:
    """Mean/std/n over seeds per (dataset, model, method, alpha) of the WiSE-FT grid."""
    grid = df[df["selection"] == "grid"]
    keys = ["dataset", "model", "method", "alpha"]
    long = per_seed_scores(grid, keys + ["seed"], report_cfg.get("id_split", "id_test"),
                           report_cfg.get("ood_split", "ood_test"))
    out = _mean_std_n(long, keys)
    return out.sort_values(keys + ["quantity"], kind="stable").reset_index(drop=True)


def _method_order(methods: pd.Series, preferred: list[str] | None) -> dict[str, int]:
    """Configured method order first, then any other method alphabetically."""
    first = [m for m in (preferred or []) if m in set(methods)]
    rest = sorted(set(methods) - set(first))
    return {m: i for i, m in enumerate(first + rest)}


def metrics_tree(summary: pd.DataFrame) -> dict:
    """``{dataset: {model: {row: {id_<m>: mean, ood_<m>: mean}}}}`` for ``dvc metrics show``."""
    tree: dict = {}
    aggregate = summary[summary["quantity"].str.match(r"^(id|ood)_[^/]+$")]
    for r in aggregate.itertuples(index=False):
        leaf = tree.setdefault(r.dataset, {}).setdefault(r.model, {}).setdefault(r.row, {})
        leaf[r.quantity] = None if pd.isna(r.mean) else round(float(r.mean), 6)
    return tree
