"""What the Li et al. (2020) layouts and figures read: every grid point's error, and the domain similarities.

Li et al. ("Rethinking the Hyperparameters for Fine-tuning", ICLR 2020) sweep learning rate x momentum x
weight decay with SGD and print top-1 *error* at the end of training, with the effective learning rate
(ELR) ``lr / (1 - momentum)`` (each run's ``effective_lr`` in run.json). The report's other tables keep only
each method's chosen grid point; these need all of them:

* :func:`grid_points`: one row per (dataset, model, method, grid point) of the momentum methods (SGD and
  its kin: those whose runs record an ELR): lr, momentum, weight decay, ELR, and the mean over seeds of
  the ID test accuracy (``report.id_split``) and of the selection score (``report.val_split``, ID val);
* :func:`point_cell`: a grid point's error cell with its bootstrap interval (examples and seeds);
* :func:`chosen`: the grid point the report chose on ID val (its "optimal ELR"; Li et al. pick the best
  error on the test set itself, which the project never does);
* :func:`elr_curves`: per (dataset, model, method, momentum, ELR) the weight decay chosen on ID val: the
  points of Figure 4's curves.

The domain similarities are the ``similarity`` stage's rows (:func:`read_similarity`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import ALL_DOMAINS
from pipeline.reporting.bootstrap import Stat
from pipeline.reporting.cells import Cell, published_cell
from pipeline.reporting.reference import NO_METHOD, RefKey, point_key
from pipeline.reporting.store import make_key

POINT_COLUMNS = ["dataset", "model", "method", "hp", "lr", "momentum", "weight_decay", "elr", "id_acc", "val_acc",
                 "order"]
SIMILARITY_COLUMNS = ["source", "dataset", "model", "emd", "similarity", "gamma"]
DIGITS = 2   # the paper prints errors with two decimals


def elr_value(lr: float, momentum: float) -> float:
    """``lr / (1 - momentum)`` rounded to 10 significant digits, so 0.01 / (1 - 0.9) is 0.1."""
    return float(f"{float(lr) / (1.0 - float(momentum)):.10g}")


def grid_points(view) -> pd.DataFrame:
    """Every grid point of the methods with a momentum setting, with its settings and mean accuracies."""
    runs = view.runs
    # momentum optimizers are those whose runs record an effective lr (pipeline.methods.assemble)
    runs = runs[runs["effective_lr"].notna() & runs["lr"].notna()] if not runs.empty else runs
    if runs.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    keys = ["dataset", "model", "method", "hp"]
    settings = runs.groupby(keys, sort=False)[["lr", "momentum", "weight_decay", "effective_lr"]].first().reset_index()
    settings["order"] = range(len(settings))   # params order: ties go to the earlier grid point
    res = view.results
    plain = res[(res["selection"] == "") & (res["domain"] == ALL_DOMAINS) & (res["metric"] == "acc")]
    val_split = view.cfg.get("val_split", "id_val")
    means = {name: plain[plain["split"] == split].groupby(keys)["value"].mean().rename(name)
             for name, split in (("id_acc", view.cfg["id_split"]), ("val_acc", val_split))}
    out = settings.join(means["id_acc"], on=keys).join(means["val_acc"], on=keys)
    out["weight_decay"] = out["weight_decay"].fillna(0.0)
    # the ELR each run recorded (run.json), and the momentum it implies where settings lack one
    out["elr"] = [float(f"{float(e):.10g}") for e in out["effective_lr"]]
    out["momentum"] = out["momentum"].fillna(1.0 - out["lr"].astype(float) / out["effective_lr"].astype(float))
    return out[POINT_COLUMNS]


def find(points: pd.DataFrame, dataset: str, model: str, method: str, **settings: float) -> pd.Series | None:
    """The grid point of a method with these settings (floats compared to rounding), or None."""
    part = points[(points["dataset"] == dataset) & (points["model"] == model) & (points["method"] == method)]
    for k, v in settings.items():
        part = part[np.isclose(part[k].astype(float), float(v), rtol=1e-9, atol=1e-15)]
    return None if part.empty else part.iloc[0]


def chosen(view, points: pd.DataFrame, dataset: str, model: str, method: str) -> pd.Series | None:
    """The method's grid point chosen on ID val (the report's selection)."""
    c = view.chosen
    hit = c[(c["dataset"] == dataset) & (c["model"] == model) & (c["method"] == method)]
    if hit.empty:
        return None
    part = points[(points["dataset"] == dataset) & (points["model"] == model) & (points["method"] == method)
                  & (points["hp"] == hit["id_hp"].iloc[0])]
    return None if part.empty else part.iloc[0]


def point_cell(view, point: pd.Series | None) -> Cell:
    """The error of one grid point: mean over seeds, with its bootstrap interval over examples and seeds."""
    if point is None or pd.isna(point["id_acc"]):
        return Cell("err", digits=DIGITS)
    cache = view.__dict__.setdefault("_point_cells", {})
    key = (point["dataset"], point["model"], point["method"], point["hp"])
    if key not in cache:
        res = view.results
        split = view.cfg["id_split"]
        seeds = sorted(set(res.loc[(res["dataset"] == key[0]) & (res["model"] == key[1]) & (res["method"] == key[2])
                                   & (res["hp"] == key[3]) & (res["selection"] == "") & (res["split"] == split),
                                   "seed"].astype(int)))
        runs = [make_key(*key, s, None) for s in seeds]
        low = high = math.nan
        if runs and all(r in view.store for r in runs):
            low, high = view.interval(Stat.leaf(np.stack([view.store.correct(r, split) for r in runs])))
        cache[key] = Cell("err", value=float(point["id_acc"]), low=low, high=high, digits=DIGITS)
    return cache[key]


def elr_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, method, momentum, ELR): the grid point whose weight decay ID val prefers."""
    if points.empty:
        return points
    keys = ["dataset", "model", "method", "momentum", "elr"]
    ranked = points.assign(_v=points["val_acc"].fillna(-math.inf)).sort_values(["_v", "order"],
                                                                                ascending=[False, True])
    best = ranked.drop_duplicates(keys).drop(columns="_v")
    return best.sort_values(keys, kind="stable").reset_index(drop=True)


def read_similarity(paths: list[str]) -> pd.DataFrame:
    """The similarity stage's rows, one per (target, model)."""
    frames = [pd.read_csv(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIMILARITY_COLUMNS)


def similarity_of(view, dataset: str, model: str) -> float:
    s = view.similarity
    hit = s[(s["dataset"] == dataset) & (s["model"] == model)] if not s.empty else s
    return math.nan if hit.empty else float(hit["similarity"].iloc[0])


def similarity_cell(value: float) -> Cell:
    return Cell("number", value=value, scale=1.0, digits=3)


def elr_cell(point: pd.Series | None) -> Cell:
    return Cell("text", text="" if point is None else f"{float(point['elr']):g}")


# --- published values -------------------------------------------------------------------------------------

def published_error(view, dataset: str, model: str, method: str, ours: Cell, point: dict | None = None
                    ) -> Cell | None:
    pub = view.reference.get(RefKey(dataset, model, method, "id", "error", point_key(point)))
    return published_cell(None if pub is None else pub.value, ours)


def published_similarity(view, dataset: str, model: str, ours: Cell) -> Cell | None:
    pub = view.reference.get(RefKey(dataset, model, NO_METHOD, "id", "similarity"))
    return published_cell(None if pub is None else pub.value, ours)


def published_elr(view, dataset: str, model: str, method: str, ours: pd.Series | None) -> Cell | None:
    """The published optimal ELR, and ours as a multiple of it: ``0.01 (x10)``."""
    pub = view.reference.get(RefKey(dataset, model, method, "id", "effective_lr"))
    if pub is None:
        return None
    text = f"{pub.value:g}"
    if ours is not None and not math.isclose(float(ours["elr"]), pub.value, rel_tol=1e-9):
        text += f" (x{float(ours['elr']) / pub.value:.3g})"
    return Cell("text", text=text)


def swept_methods(points: pd.DataFrame, methods: list[str]) -> list[str]:
    """The experiment's methods that have grid points here, in experiment order."""
    present = set(points["method"])
    return [m for m in methods if m in present]


def point_label(momentum: float, lr: float, weight_decay: float) -> str:
    """``m 0.9, lr 0.01, wd 0.0001`` (ASCII: the LaTeX tables take it as it is)."""
    return f"m {momentum:g}, lr {lr:g}, wd {weight_decay:g}"


def tables_of(view, points: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(model, method, datasets with grid points) per table, in experiment order."""
    out = []
    for model in view.models:
        for method in swept_methods(points, view.methods):
            part = points[(points["model"] == model) & (points["method"] == method)]
            datasets = [d for d in view.datasets if d in set(part["dataset"])]
            if datasets:
                out.append((model, method, datasets))
    return out


def method_label(view, method: str) -> str:
    return (view.cfg.get("labels") or {}).get(method, method)


def source_name(view) -> str:
    s = view.similarity
    return "" if s.empty else ", ".join(dict.fromkeys(s["source"].astype(str)))
