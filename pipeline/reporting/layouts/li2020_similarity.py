"""Layout ``li2020_similarity``: Li et al. (2020) Table 4, domain similarity against the optimal ELR.

Targets as rows; per model, two columns: the domain similarity of the target to the source (the
``similarity`` stage: Cui et al. 2018, exp(-0.01 EMD) of class-mean features) and the ELR of the grid
point chosen on ID val of the first momentum method. Under each target, the published similarity and
optimal ELR, with ours minus / as a multiple of them. The figure the paper implies, optimal ELR against
similarity across targets and models (``paper/figures/li2020_similarity.pdf``), is set beside it.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting.hyperparams import (
    chosen,
    elr_cell,
    grid_points,
    published_elr,
    published_similarity,
    similarity_cell,
    similarity_of,
    source_name,
    swept_methods,
)
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView


def context(view: ReportView) -> dict:
    points = grid_points(view)
    methods = swept_methods(points, view.methods)
    method = methods[0] if methods else None
    s = view.similarity
    models = [m for m in view.models if (not s.empty and m in set(s["model"])) or m in set(points["model"])]
    datasets = [d for d in view.datasets if (not s.empty and d in set(s["dataset"])) or d in set(points["dataset"])]
    cols = []
    for model in models:
        def sim(row, model=model):
            return similarity_cell(similarity_of(view, row, model))

        def elr(row, model=model):
            return elr_cell(chosen(view, points, row, model, method) if method else None)

        cols.append(Column(model, "sim", sim, lambda row, m, sim=sim, model=model: published_similarity(
            view, row, model, sim(row))))
        cols.append(Column(model, "ELR", elr, lambda row, m, model=model: published_elr(
            view, row, model, method, chosen(view, points, row, model, method)) if method else None))
    # the published row is looked up with the method of the ELR column
    rows = pd.DataFrame({"row": datasets, "method": method or "", "ref": method or "", "label": datasets})
    grids = [grid(f"Source: {source_name(view) or 'none'}", "Target", cols, [(None, rows)],
                  source=published_label(view))] if cols and datasets else []
    return {**common_context(view), "grids": [g for g in grids if not g.is_empty()], "source": source_name(view),
            "figure": "figures/li2020_similarity.pdf" if grids else ""}
