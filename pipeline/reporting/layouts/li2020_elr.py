"""Layout ``li2020_elr``: Li et al. (2020) Figure 4, the error against the effective learning rate (ELR).

The figure (``paper/figures/li2020_elr.pdf``, :mod:`pipeline.reporting.hyperparam_figures`) draws, per
model and target, the error (%) at each ELR = lr / (1 - momentum), one curve per momentum (at each ELR the
weight decay chosen on ID val). Its legends, the best error and its ELR, are this table: per model and
momentum method, the error of the grid point chosen on ID val and that point's ELR, targets as columns,
with the published legend values (the paper's "optimal ELR" is Table 4's; Figure 4(c) prints 0.05 for
Indoor with MobileNet where Table 4 prints 0.01) and ours against them.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting.hyperparams import (
    chosen,
    elr_cell,
    grid_points,
    method_label,
    point_cell,
    published_elr,
    published_error,
    tables_of,
)
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView


def context(view: ReportView) -> dict:
    points = grid_points(view)
    grids = []
    for model, method, datasets in tables_of(view, points):
        name = method_label(view, method)
        rows = pd.DataFrame({"row": ["error", "elr"], "method": method, "ref": method,
                             "label": [f"{name}: error at the grid point chosen on ID val", "its ELR"]})

        def cell(row, d, model=model, method=method):
            p = chosen(view, points, d, model, method)
            return point_cell(view, p) if row == "error" else elr_cell(p)

        def published(row, m, d, model=model, cell=cell):
            if row == "error":
                return published_error(view, d, model, m, cell(row, d))
            return published_elr(view, d, model, m, chosen(view, points, d, model, m))

        cols = [Column("Best error (%) and its ELR", d, lambda row, d=d, cell=cell: cell(row, d),
                       lambda row, m, d=d, published=published: published(row, m, d)) for d in datasets]
        grids.append(grid(f"{model} / {name}", "", cols, [(None, rows)], source=published_label(view)))
    return {**common_context(view), "grids": [g for g in grids if not g.is_empty()],
            "figure": "figures/li2020_elr.pdf" if grids else ""}
