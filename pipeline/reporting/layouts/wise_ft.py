"""Layout ``wise_ft``: the WiSE-FT paper's main table (Wortsman et al. 2022, Table 1).

Per dataset/model (ImageNet and its shifts in the paper): the zero-shot model, then for each
fine-tuned method its end-to-end fine-tuned model, WiSE-FT at the fixed alpha
(``report.wise_ft_alpha``, 0.5), WiSE-FT at the alpha chosen on ID val (``wise_ft.select: id_val``)
and, with ``report.wise_ft_optimal``, the paper's "optimal alpha" row: the best alpha of each column,
an oracle on the test sets, labelled as one. Columns: ID, each distribution shift (OOD domain) and
their average.
"""
from __future__ import annotations

import pandas as pd

from pipeline.reporting.aggregate import headline
from pipeline.reporting.tables import Column, common_context, grid, published_label
from pipeline.reporting.view import ReportView

MIXED = ("wise_ft_fixed", "wise_ft", "wise_ft_optimal")   # the WiSE-FT rows


def _rows(view: ReportView, dataset: str, model: str) -> pd.DataFrame:
    """Zero-shot first, then per WiSE-FT'd method: fine-tuned, fixed alpha, alpha on ID val, optimal alpha."""
    rows = view.table_rows(dataset, model, ("zeroshot", "ft", *MIXED))
    mixed = set(rows.loc[rows["kind"].isin(MIXED), "method"])
    order = {"zeroshot": 0, "ft": 1, "wise_ft_fixed": 2, "wise_ft": 3, "wise_ft_optimal": 4}
    keep = rows[(rows["kind"] == "zeroshot") | rows["method"].isin(mixed)]
    keep = keep.assign(_z=keep["kind"] != "zeroshot", _m=keep["method"], _k=keep["kind"].map(order))
    return keep.sort_values(["_z", "_m", "_k"], kind="stable")[["kind", "method", "row", "label"]]


def _columns(view: ReportView, dataset: str, model: str) -> list[Column]:
    s = view.summary
    quantities = set(s.loc[(s["dataset"] == dataset) & (s["model"] == model), "quantity"])
    domains = sorted(x.split("/", 1)[1] for x in quantities if x.startswith("ood_acc/"))
    specs = [("ID", headline(view.cfg, dataset, "id"), "id", dataset)]
    if len(domains) > 1:
        specs += [("Distribution shifts", f"ood_acc/{d}", "ood", f"{dataset}/{d}") for d in domains]
    specs.append(("Avg. shifts" if len(domains) > 1 else "OOD", headline(view.cfg, dataset, "ood"), "ood", dataset))
    cols = []
    for group, q, side, ref in specs:
        header = q.split("/", 1)[1] if "/" in q else ""
        cols.append(Column(group, header, lambda row, q=q: view.cell(dataset, model, row, q, mark=True),
                           lambda row, method, q=q, side=side, ref=ref: view.published(
                               ref, model, method, side, view.cell(dataset, model, row, q))))
    return cols


def context(view: ReportView) -> dict:
    grids = []
    for dataset, model in view.pairs():
        rows = _rows(view, dataset, model)
        if rows["kind"].isin(MIXED).any():
            grids.append(grid(f"{dataset} / {model}", "Model", _columns(view, dataset, model), [(None, rows)],
                              source=published_label(view)))
    return {**common_context(view), "grids": grids,
            "fixed_alpha": f"{float(view.cfg.get('wise_ft_alpha', 0.5)):g}"}
