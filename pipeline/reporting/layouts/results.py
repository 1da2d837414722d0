"""Layout ``results``: one grid per dataset/model with every table row of the experiment.

Columns: the WiSE-FT mixing weight, the headline ID and OOD accuracy, each OOD domain, any
official metric (e.g. WILDS worst-group), the expected calibration error ID and OOD, and the
effective robustness. Rows are grouped by kind (zero-shot, LP and fine-tuning first; soups,
WiSE-FT, then the two oracles, labelled as such).
"""
from __future__ import annotations

from functools import partial

import pandas as pd

from pipeline.reporting import names
from pipeline.reporting.aggregate import KINDS, headline
from pipeline.reporting.cells import Cell
from pipeline.reporting.tables import GROUP_HEADINGS, Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView

# WiSE-FT at a fixed alpha has its own layout (wise_ft); here it would only repeat the curve.
SHOWN = tuple(k for k in KINDS if k != "wise_ft_fixed")
ACC_SIDES = {"id": "ID", "ood": "OOD"}


def _official_metrics(quantities: set[str]) -> list[str]:
    """Metrics besides accuracy and ECE (a dataset's official ones), in name order."""
    names = {q.split("_", 1)[1].split("/")[0] for q in quantities if q.startswith(("id_", "ood_"))}
    return sorted(names - {"acc", "ece"})


def columns(view: ReportView, dataset: str, model: str) -> list[Column]:
    s = view.summary
    part = s[(s["dataset"] == dataset) & (s["model"] == model)]
    quantities = set(part["quantity"])
    cell, number = partial(view.cell, dataset, model), partial(view.number, dataset, model)
    cols = [Column("", "alpha", lambda row: Cell("number", value=number(row, "alpha").value, scale=1.0,
                                                     digits=2))]
    for side, title in ACC_SIDES.items():
        q = headline(view.cfg, dataset, side)
        domains = sorted(x.split("/", 1)[1] for x in quantities if x.startswith("ood_acc/"))
        metric = q.split("_", 1)[1]
        name = "mean" if q == "ood_acc" and domains else names.METRICS.get(metric, metric)
        cols.append(Column(title, name, lambda row, q=q: cell(row, q, mark=True),
                           lambda row, method, q=q, side=side: view.published(dataset, model, method, side,
                                                                               cell(row, q))))
        if side == "ood" and q == "ood_acc" and len(domains) > 1:
            cols += [Column(title, names.domain(d), lambda row, d=d: cell(row, f"ood_acc/{d}")) for d in domains]
    shown = {headline(view.cfg, dataset, side) for side in ACC_SIDES}
    for m in _official_metrics(quantities):
        for side, title in ACC_SIDES.items():
            q = f"{side}_{m}"
            if q in quantities and q not in shown:
                cols.append(Column(f"{title} {names.METRICS.get(m, m)}", "", lambda row, q=q: cell(row, q)))
    cols += [Column("ECE", title, lambda row, q=f"{side}_ece": number(row, q))
             for side, title in ACC_SIDES.items() if f"{side}_ece" in quantities]
    if "er" in quantities:
        cols.append(Column("Eff. rob.", "OOD", lambda row: number(row, "er")))
    return cols


def context(view: ReportView) -> dict:
    grids = []
    for dataset, model in view.pairs():
        groups = [(GROUP_HEADINGS.get(k), view.table_rows(dataset, model, (k,))) for k in SHOWN]
        # zero-shot, LP and plain fine-tuning share the first group
        first = [g for k, g in zip(SHOWN, groups) if k in ("zeroshot", "lp", "ft")]
        rest = [g for k, g in zip(SHOWN, groups) if k not in ("zeroshot", "lp", "ft")]
        merged = [(None, pd.concat([g[1] for g in first], ignore_index=True)), *rest]
        grids.append(grid(names.pair(dataset, model), "Method", columns(view, dataset, model), merged,
                          source=published_label(view)))
    return {**common_context(view), "grids": grids}
