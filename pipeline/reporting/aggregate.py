"""Aggregate the tidy metric CSVs into per-method summaries and WiSE-FT curves.

Every result file shares :data:`pipeline.evaluation.metrics.COLUMNS`, so the
report concatenates them and works on one long frame. A *table row* is one
model-selection outcome:

* ``lp``: the linear probe (C chosen on ID val);
* ``ft``: each fine-tuning method at the grid point chosen on ID val;
* ``soup``: the uniform and greedy soups;
* ``wise_ft``: WiSE-FT of the chosen grid point, alpha chosen on ID val;
* ``wise_ft_fixed``: the same at the fixed alpha ``report.wise_ft_alpha`` (default 0.5, the
  WiSE-FT paper's choice without validation data), when the alpha grid holds it;
* reported apart as oracles (not valid selection rules): ``hp_oracle``, the grid
  point chosen on OOD val (methods with more than one grid point),
  ``oracle``, WiSE-FT with alpha chosen on OOD val, and (``report.wise_ft_optimal``)
  ``wise_ft_optimal``, the WiSE-FT paper's "optimal alpha": for each column (quantity) on its
  own, the alpha of the grid with the best mean, i.e. chosen on the test set it reports
  (Wortsman et al. 2022, Table 1's caption); it has no interval.

A grid point is chosen by its mean over seeds of the selection metric on
``report.val_split`` (ID) or ``report.ood_val_split`` (OOD, mean over domains);
ties go to the earlier grid point. Per seed, the ID score of a metric is its
value on ``report.id_split`` (domain ``all``); the OOD score is the unweighted
mean over the OOD domains of ``report.ood_split``, so a large domain cannot hide
a weak one. A metric with no per-domain rows (e.g. a worst-group score) falls
back to domain ``all``. Seeds are then summarised as mean, std (ddof=1, NaN for
one seed) and n.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.evaluation.metrics import ALL_DOMAINS, SORT_COLUMNS, read_tidy, sort_results  # noqa: F401 (re-exported)

# Table row kinds, in table order.
KINDS = ("zeroshot", "lp", "ft", "soup", "wise_ft_fixed", "wise_ft", "hp_oracle", "oracle", "wise_ft_optimal")
ROW_SUFFIX = {"zeroshot": "", "lp": "", "ft": "", "soup": "", "wise_ft_fixed": "/wise_ft_fixed", "wise_ft": "/wise_ft",
              "hp_oracle": "/oracle_hp", "oracle": "/wise_ft_oracle", "wise_ft_optimal": "/wise_ft_optimal"}
WISE_FT_ALPHA = 0.5
WISE_FT_OPTIMAL = False   # report.wise_ft_optimal: the per-column oracle row is opt-in
LP_METHOD = "lp"
ZEROSHOT_METHOD = "zeroshot"   # an OpenCLIP model with its zero-shot head (pipeline.evaluation.zeroshot)
SOUP_METHODS = ("uniform_soup", "greedy_soup")
DEFAULT_LABELS = {"lp": "LP", "zeroshot": "Zero-shot", "uniform_soup": "Uniform soup", "greedy_soup": "Greedy soup"}
SUMMARY_COLUMNS = ["dataset", "model", "kind", "method", "row", "label", "hp", "quantity", "mean", "std", "n"]
SELECTION_DEFAULTS = {"val_split": "id_val", "ood_val_split": "ood_val", "selection_metric": "acc"}


def headline(cfg: dict, dataset: str, side: str) -> str:
    """A dataset's headline ID or OOD quantity: ``report.quantities`` (default ``id_acc`` / ``ood_acc``).

    E.g. Waterbirds' worst-group accuracy ``ood_acc_wg`` or FMoW's worst region ``ood_acc/Africa``.
    """
    return ((cfg.get("quantities") or {}).get(dataset) or {}).get(side, f"{side}_acc")


def parse_quantity(quantity: str) -> tuple[str, str, str | None]:
    """``ood_acc/Africa`` -> (``ood``, ``acc``, ``Africa``)."""
    side, rest = quantity.split("_", 1)
    metric, _, domain = rest.partition("/")
    return side, metric, domain or None


def read_runs(paths: list[str]) -> pd.DataFrame:
    """One row per run.json: ids, optimizer, lr, momentum, weight decay, effective lr, frozen fraction, selected
    epoch (momentum and weight decay: NaN for optimizers without them)."""
    rows = []
    for p in paths:
        run = json.loads(Path(p).read_text())
        settings = run.get("settings") or {}
        rows.append({"dataset": run["dataset"], "model": run["model"], "method": run["method"],
                     "hp": run.get("hp", ""), "seed": int(run["seed"]), "optimizer": settings.get("optimizer"),
                     "lr": run.get("lr", settings.get("lr")), "momentum": settings.get("momentum"),
                     "weight_decay": settings.get("weight_decay"), "effective_lr": run.get("effective_lr"),
                     "frozen_fraction": run.get("frozen_fraction", 0.0), "selected_epoch": run.get("selected_epoch")})
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "hp", "seed", "optimizer", "lr", "momentum",
                                       "weight_decay", "effective_lr", "frozen_fraction", "selected_epoch"])


def row_label(kind: str, method: str, labels: dict[str, str], fixed_alpha: float = WISE_FT_ALPHA) -> str:
    """Display name of a table row, e.g. ``FT (AdamW) + WiSE-FT (alpha on OOD val)``."""
    base = labels.get(method, DEFAULT_LABELS.get(method, method))
    return {"zeroshot": base, "lp": base, "ft": base, "soup": base, "wise_ft": f"{base} + WiSE-FT",
            "wise_ft_fixed": f"{base} + WiSE-FT, alpha {fixed_alpha:g}",
            "hp_oracle": f"{base}, grid point on OOD val", "oracle": f"{base} + WiSE-FT, alpha on OOD val",
            "wise_ft_optimal": f"{base} + WiSE-FT, optimal alpha per column (oracle)"}[kind]


def select_grid_points(df: pd.DataFrame, report_cfg: dict) -> pd.DataFrame:
    """Per (dataset, model, method): the grid point chosen on ID val and, as an oracle, on OOD val.

    Columns: dataset, model, method, id_hp, ood_hp, n_points.
    """
    cfg = {**SELECTION_DEFAULTS, **report_cfg}
    runs = df[(df["selection"] == "") & ~df["method"].isin((LP_METHOD, ZEROSHOT_METHOD, *SOUP_METHODS))]
    keys = ["dataset", "model", "method", "hp"]
    long = per_seed_scores(runs, keys + ["seed"], cfg["val_split"], cfg["ood_val_split"])
    # Grid order = order of first appearance in the run list (params order), for tie-breaking.
    order = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, runs[keys].to_numpy())))}
    means = long.groupby(keys + ["quantity"], sort=False)["value"].mean().reset_index()
    out = []
    for (d, mo, me), part in means.groupby(["dataset", "model", "method"], sort=False):
        row = {"dataset": d, "model": mo, "method": me, "n_points": part["hp"].nunique()}
        for side, quantity in (("id_hp", "id_"), ("ood_hp", "ood_")):
            cand = part[part["quantity"] == quantity + cfg["selection_metric"]]
            if cand.empty:
                row[side] = None if side == "ood_hp" else part["hp"].iloc[0]
                continue
            cand = cand.assign(_o=[order[(d, mo, me, h)] for h in cand["hp"]])
            row[side] = cand.sort_values(["value", "_o"], ascending=[False, True])["hp"].iloc[0]
        out.append(row)
    return pd.DataFrame(out, columns=["dataset", "model", "method", "id_hp", "ood_hp", "n_points"])


def assign_rows(df: pd.DataFrame, chosen: pd.DataFrame, fixed_alpha: float = WISE_FT_ALPHA) -> pd.DataFrame:
    """The tidy rows of every table row, with ``kind`` and ``row`` added."""
    key = ["dataset", "model", "method"]
    m = df.merge(chosen, on=key, how="left")
    plain, swept = m["selection"] == "", m["n_points"].fillna(1) > 1
    fixed = (m["selection"] == "grid") & ((m["alpha"] - fixed_alpha).abs() < 1e-9)
    parts = [
        m[m["method"] == ZEROSHOT_METHOD].assign(kind="zeroshot"),
        m[m["method"] == LP_METHOD].assign(kind="lp"),
        m[plain & m["method"].isin(SOUP_METHODS)].assign(kind="soup"),
        m[plain & (m["hp"] == m["id_hp"])].assign(kind="ft"),
        m[fixed & (m["hp"] == m["id_hp"])].assign(kind="wise_ft_fixed"),
        m[(m["selection"] == "id_val") & (m["hp"] == m["id_hp"])].assign(kind="wise_ft"),
        m[plain & swept & (m["hp"] == m["ood_hp"])].assign(kind="hp_oracle"),
        m[(m["selection"] == "ood_val_oracle") & (m["hp"] == m["id_hp"])].assign(kind="oracle"),
    ]
    out = pd.concat(parts, ignore_index=True)[list(df.columns) + ["kind"]]
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


def summarise(df: pd.DataFrame, report_cfg: dict, methods: list[str] | None = None,
              chosen: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean/std/n over seeds of every quantity of every table row, in table order.

    WiSE-FT rows also get ``alpha`` (the chosen mixing weight) as a quantity; ``hp``
    names the grid point(s) a row comes from. ``chosen``: :func:`select_grid_points` of ``df``
    (computed here if not given).
    """
    id_split, ood_split = report_cfg.get("id_split", "id_test"), report_cfg.get("ood_split", "ood_test")
    chosen = select_grid_points(df, report_cfg) if chosen is None else chosen
    fixed_alpha = float(report_cfg.get("wise_ft_alpha", WISE_FT_ALPHA))
    rows = assign_rows(df, chosen, fixed_alpha)
    keys = ["dataset", "model", "kind", "method", "row"]
    long = per_seed_scores(rows, keys + ["seed"], id_split, ood_split)
    mixed = rows[rows["kind"].isin(["wise_ft_fixed", "wise_ft", "oracle"])]
    alphas = (mixed.groupby(keys + ["seed"], sort=False)["alpha"].first().reset_index()
              .rename(columns={"alpha": "value"}).assign(quantity="alpha"))
    summary = _mean_std_n(pd.concat([long, alphas], ignore_index=True), keys)
    hps = rows.groupby(keys, sort=False)["hp"].agg(lambda v: ",".join(dict.fromkeys(v))).rename("hp")
    summary = summary.merge(hps.reset_index(), on=keys, how="left")
    if report_cfg.get("wise_ft_optimal", WISE_FT_OPTIMAL):
        summary = pd.concat([summary, optimal_alpha(wise_ft_curves(df, report_cfg, chosen), chosen)],
                            ignore_index=True)
    labels = report_cfg.get("labels") or {}
    summary["label"] = [row_label(k, m, labels, fixed_alpha) for k, m in zip(summary["kind"], summary["method"])]
    order = _method_order(summary["method"], [*(methods or []), *SOUP_METHODS])
    summary = summary.assign(_k=summary["kind"].map(KINDS.index), _m=summary["method"].map(order))
    summary = summary.sort_values(["dataset", "model", "_k", "_m", "quantity"], kind="stable")
    return summary[SUMMARY_COLUMNS].reset_index(drop=True)


def wise_ft_curves(df: pd.DataFrame, report_cfg: dict, chosen: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean/std/n over seeds per (dataset, model, method, alpha) of the WiSE-FT grid, at the chosen grid point."""
    chosen = select_grid_points(df, report_cfg) if chosen is None else chosen
    picks = chosen[["dataset", "model", "method", "id_hp"]]
    grid = df[df["selection"] == "grid"].merge(picks, on=["dataset", "model", "method"])
    grid = grid[grid["hp"] == grid["id_hp"]]
    keys = ["dataset", "model", "method", "alpha"]
    long = per_seed_scores(grid, keys + ["seed"], report_cfg.get("id_split", "id_test"),
                           report_cfg.get("ood_split", "ood_test"))
    out = _mean_std_n(long, keys)
    return out.sort_values(keys + ["quantity"], kind="stable").reset_index(drop=True)


def optimal_alpha(curves: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The ``wise_ft_optimal`` summary rows: per quantity, the alpha whose mean over seeds is highest.

    The WiSE-FT paper's "optimal alpha" ("the single mixing coefficient that maximizes the column",
    Table 1): an oracle on the reported test sets, so every column may come from another alpha (the
    shifts' average included, chosen as a column of its own). Ties go to the smaller alpha. Calibration
    (ECE, lower is better) has no optimum here. ``curves``: :func:`wise_ft_curves`.
    """
    cols = ["dataset", "model", "kind", "method", "row", "quantity", "mean", "std", "n", "hp"]
    if curves.empty:
        return pd.DataFrame(columns=cols)
    scored = curves[[parse_quantity(q)[1] != "ece" for q in curves["quantity"]]]
    best = (scored.sort_values(["mean", "alpha"], ascending=[False, True], kind="stable")
            .drop_duplicates(["dataset", "model", "method", "quantity"]))
    best = best.merge(chosen[["dataset", "model", "method", "id_hp"]], on=["dataset", "model", "method"])
    return best.assign(kind="wise_ft_optimal", row=best["method"] + ROW_SUFFIX["wise_ft_optimal"],
                       hp=best["id_hp"])[cols]


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
