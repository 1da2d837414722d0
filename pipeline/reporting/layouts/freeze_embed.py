"""Layout ``freeze_embed``: the freeze-embed paper's table (Kumar et al. 2024, Tables 2a/2b).

One grid per model: the fine-tuning methods as rows, each dataset as an ID/OOD pair of columns
(its headline quantities, ``report.quantities``), then the average over datasets. A last grid
averages every cell over the models. Published values, where the reference has them, sit in a
row under each method with ours minus theirs.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting.aggregate import headline
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView

SIDES = {"id": "ID", "ood": "OOD"}
KINDS = ("ft",)


def _rows(view: ReportView, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The method rows present for any of the pairs, in table order."""
    frames = [view.table_rows(d, m, KINDS) for d, m in pairs]
    return pd.concat(frames, ignore_index=True).drop_duplicates("row") if frames else pd.DataFrame()


def _model_grid(view: ReportView, model: str, datasets: list[str]) -> object:
    cols = []
    for d in datasets:
        for side, title in SIDES.items():
            q = headline(view.cfg, d, side)
            cols.append(Column(d, title, lambda row, d=d, q=q: view.cell(d, model, row, q, mark=True),
                               lambda row, method, d=d, q=q, side=side: view.published(
                                   d, model, method, side, view.cell(d, model, row, q))))
    for side, title in SIDES.items():
        parts = lambda row, side=side: [(d, model, row, headline(view.cfg, d, side)) for d in datasets]  # noqa: E731
        cols.append(Column("Avg.", title, lambda row, parts=parts: view.average_cell(parts(row)),
                           lambda row, method, parts=parts, side=side: view.average_published(
                               model, method, side, view.average_cell(parts(row)))))
    rows = _rows(view, [(d, model) for d in datasets])
    return grid(model, "Method", cols, [(None, rows)], source=published_label(view))


def _average_grid(view: ReportView, models: list[str], pairs: set[tuple[str, str]], datasets: list[str]) -> object:
    cols = []
    for d in datasets:
        for side, title in SIDES.items():
            q = headline(view.cfg, d, side)
            cols.append(Column(d, title, lambda row, d=d, q=q: view.average_cell(
                [(d, m, row, q) for m in models if (d, m) in pairs])))
    for side, title in SIDES.items():
        cols.append(Column("Avg.", title, lambda row, side=side: view.average_cell(
            [(d, m, row, headline(view.cfg, d, side)) for d in datasets for m in models if (d, m) in pairs])))
    rows = _rows(view, sorted(pairs))
    return grid(f"Average over {len(models)} models", "Method", cols, [(None, rows)])


def context(view: ReportView) -> dict:
    pairs = view.pairs()
    datasets = list(dict.fromkeys(d for d, _ in pairs))
    models = list(dict.fromkeys(m for _, m in pairs))
    grids = [_model_grid(view, m, [d for d in datasets if (d, m) in pairs]) for m in models]
    if len(models) > 1:
        grids.append(_average_grid(view, models, set(pairs), datasets))
    quantities = {d: (headline(view.cfg, d, "id"), headline(view.cfg, d, "ood")) for d in datasets}
    return {**common_context(view), "grids": [g for g in grids if not g.is_empty()], "quantities": quantities}
