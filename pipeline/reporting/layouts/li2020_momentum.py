"""Layout ``li2020_momentum``: Li et al. (2020) Table 2, momentum 0.9 against no momentum at two learning rates.

Per model and momentum method: the eight grid points of the paper's Table 2 (momentum 0.9 and 0, lr 0.01
and 0.005, weight decay 0.0001 and 0) that the grid holds, as rows; the targets as columns; each cell the
top-1 error (%) on ``report.id_split`` at the end of training, mean over seeds with its interval. Under
each row, the published error and ours minus it (ResNet-101 only in the paper). At momentum 0 the
effective lr is the lr itself, ten times smaller than at momentum 0.9: the paper's point.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting.hyperparams import (
    find,
    grid_points,
    method_label,
    point_cell,
    point_label,
    published_error,
    tables_of,
)
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView

# (momentum, lr, weight decay), in the paper's row order
POINTS = [(0.9, 0.01, 1e-4), (0.9, 0.01, 0.0), (0.9, 0.005, 1e-4), (0.9, 0.005, 0.0),
          (0.0, 0.01, 1e-4), (0.0, 0.01, 0.0), (0.0, 0.005, 1e-4), (0.0, 0.005, 0.0)]


def _settings(p: tuple[float, float, float]) -> dict[str, float]:
    return {"momentum": p[0], "lr": p[1], "weight_decay": p[2]}


def context(view: ReportView) -> dict:
    points = grid_points(view)
    grids = []
    for model, method, datasets in tables_of(view, points):
        held = [p for p in POINTS if any(find(points, d, model, method, **_settings(p)) is not None
                                         for d in datasets)]
        rows = pd.DataFrame({"row": [point_label(*p) for p in held], "method": method, "ref": method,
                             "label": [point_label(*p) for p in held]})
        by_label = {point_label(*p): _settings(p) for p in held}

        def cell(row, d, model=model, method=method, by_label=by_label):
            return point_cell(view, find(points, d, model, method, **by_label[row]))

        cols = [Column("Top-1 error (%)", d, lambda row, d=d, cell=cell: cell(row, d),
                       lambda row, m, d=d, cell=cell, model=model, by_label=by_label: published_error(
                           view, d, model, m, cell(row, d), by_label[row])) for d in datasets]
        grids.append(grid(f"{model} / {method_label(view, method)}", "Setting", cols, [(None, rows)],
                          source=published_label(view)))
    return {**common_context(view), "grids": [g for g in grids if not g.is_empty()]}
