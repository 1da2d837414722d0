"""Layout ``lpft``: the LP-FT paper's two tables (Kumar et al. 2022, Tables 1 and 2).

An ID table and an OOD table, with LP, FT and LP-FT (every fine-tuning method of the
experiment) as rows and the datasets as columns, each with its own backbone
(``datasets.<d>.models``); the OOD table has one column per OOD domain of a dataset (STL and
CIFAR-10.1; ImageNet-V2, -R, -Sketch, -A) and the average over all its columns.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting import names
from pipeline.reporting.aggregate import headline
from pipeline.reporting.cells import Grid
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView

KINDS = ("zeroshot", "lp", "ft")


def _title(view: ReportView, dataset: str, model: str) -> str:
    # A dataset run with one backbone is named alone (the caption lists the backbones).
    models = [m for d, m in view.pairs() if d == dataset]
    return names.dataset(dataset) if len(models) == 1 else names.pair(dataset, model)


def _ood_columns(view: ReportView, dataset: str, model: str) -> list[tuple[str, str, str]]:
    """(header, quantity, reference dataset key) per OOD column of a dataset."""
    q = headline(view.cfg, dataset, "ood")
    s = view.summary
    quantities = set(s.loc[(s["dataset"] == dataset) & (s["model"] == model), "quantity"])
    domains = sorted(x.split("/", 1)[1] for x in quantities if x.startswith("ood_acc/"))
    if q == "ood_acc" and len(domains) > 1:
        return [(names.domain(d), f"ood_acc/{d}", f"{dataset}/{d}") for d in domains]
    return [("OOD", q, dataset)]


def _grid(view: ReportView, side: str) -> Grid:
    pairs = view.pairs()
    cols, parts = [], []
    for d, m in pairs:
        specs = [("ID", headline(view.cfg, d, "id"), d)] if side == "id" else _ood_columns(view, d, m)
        for header, q, ref in specs:
            parts.append((d, m, q))
            cols.append(Column(_title(view, d, m), header if side == "ood" and len(specs) > 1 else "",
                               lambda row, d=d, m=m, q=q: view.cell(d, m, row, q, mark=True),
                               lambda row, method, d=d, m=m, q=q, ref=ref: view.published(
                                   ref, m, method, side, view.cell(d, m, row, q))))
    cols.append(Column("Avg.", "", lambda row: view.average_cell([(d, m, row, q) for d, m, q in parts])))
    frames = [view.table_rows(d, m, KINDS) for d, m in pairs]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("row") if frames else pd.DataFrame()
    title = "ID accuracy" if side == "id" else "OOD accuracy"
    return grid(title, "Method", cols, [(None, rows)], source=published_label(view))


def context(view: ReportView) -> dict:
    grids = [_grid(view, "id"), _grid(view, "ood")]
    backbones = [f"{d}: {m}" for d, m in view.pairs()]
    return {**common_context(view), "grids": [g for g in grids if not g.is_empty()], "backbones": backbones}
