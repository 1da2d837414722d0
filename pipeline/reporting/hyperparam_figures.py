"""The Li et al. (2020) figures: error against the effective learning rate, and optimal ELR against similarity.

* :func:`elr_figure` is the paper's Figure 4: per model (rows) and target (columns), the top-1 error (%)
  against the effective learning rate ELR = lr / (1 - momentum) on a log axis, one curve per momentum
  (at each ELR the weight decay chosen on ID val), the grid point chosen on ID val circled; the legend of
  each panel gives ours and the published best error and ELR where the reference has them.
* :func:`similarity_elr_figure` is the figure the paper implies but does not draw: the optimal ELR (log
  axis) against the domain similarity to the source, one point per target and model, ours filled and the
  published Table 4 values open, each labelled with its target.

Drawn like :mod:`pipeline.reporting.figures` (no pyplot, fixed style, no dates), so a re-run writes the
same bytes.
"""
from __future__ import annotations

import math

import matplotlib
import matplotlib.style
import pandas as pd
from matplotlib.figure import Figure

from pipeline.reporting.figures import STYLE
from pipeline.reporting.hyperparams import (
    chosen,
    elr_curves,
    grid_points,
    method_label,
    similarity_of,
    swept_methods,
    tables_of,
)
from pipeline.reporting.reference import NO_METHOD, RefKey


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _published(view, dataset: str, model: str, method: str, quantity: str) -> float:
    pub = view.reference.get(RefKey(dataset, model, method if quantity != "similarity" else NO_METHOD, "id",
                                    quantity))
    return math.nan if pub is None else pub.value


def elr_figure(view) -> Figure:
    """Figure 4: error (%) against ELR per model (rows) and target (columns), one curve per momentum."""
    points = grid_points(view)
    tables = tables_of(view, points)
    with matplotlib.style.context(["default", STYLE]):
        if not tables:
            return _empty(Figure(figsize=(4, 1.5)), "no momentum-SGD grid in this experiment")
        ncols = max(len(ds) for _, _, ds in tables)
        fig = Figure(figsize=(2.6 * ncols + 0.4, 2.4 * len(tables)), layout="constrained")
        axes = fig.subplots(len(tables), ncols, squeeze=False)
        curves = elr_curves(points)
        momenta = sorted(set(points["momentum"].astype(float)), reverse=True)
        palette = matplotlib.color_sequences["tab10"]
        colors = {m: palette[i % len(palette)] for i, m in enumerate(momenta)}
        for r, (model, method, datasets) in enumerate(tables):
            for c in range(ncols):
                ax = axes[r][c]
                if c >= len(datasets):
                    ax.axis("off")
                    continue
                d = datasets[c]
                part = curves[(curves["dataset"] == d) & (curves["model"] == model) & (curves["method"] == method)]
                for m in momenta:
                    line = part[part["momentum"].astype(float) == m].sort_values("elr")
                    if not line.empty:
                        ax.plot(line["elr"], 100 * (1 - line["id_acc"]), "-o", ms=3, color=colors[m],
                                label=f"m {m:g}")
                best = chosen(view, points, d, model, method)
                label = ""
                if best is not None and not pd.isna(best["id_acc"]):
                    err = 100 * (1 - float(best["id_acc"]))
                    ax.plot([best["elr"]], [err], "o", ms=9, mfc="none", mec="black", mew=1.0)
                    label = f"ours {err:.2f} at {float(best['elr']):g}"
                pub_err, pub_elr = (_published(view, d, model, method, q) for q in ("error", "effective_lr"))
                if not math.isnan(pub_err):
                    label += f"\npaper {pub_err:.2f} at {pub_elr:g}"
                if label:
                    ax.plot([], [], " ", label=label.strip())
                ax.set_xscale("log")
                ax.set_title(f"{d} / {model}" + (f" ({method_label(view, method)})" if len(
                    swept_methods(points, view.methods)) > 1 else ""))
                ax.set_xlabel("ELR = lr / (1 - momentum)")
                if c == 0:
                    ax.set_ylabel("top-1 error (%)")
                ax.legend(loc="best", frameon=False, fontsize=6)
    return fig


def similarity_elr_figure(view) -> Figure:
    """Optimal ELR against domain similarity: ours (filled) and the published Table 4 values (open)."""
    points = grid_points(view)
    methods = swept_methods(points, view.methods)
    method = methods[0] if methods else None
    rows = []
    for model in view.models:
        for d in view.datasets:
            best = chosen(view, points, d, model, method) if method else None
            rows.append({"dataset": d, "model": model, "sim": similarity_of(view, d, model),
                         "elr": math.nan if best is None else float(best["elr"]),
                         "pub_sim": _published(view, d, model, method or "", "similarity"),
                         "pub_elr": _published(view, d, model, method or "", "effective_lr")})
    df = pd.DataFrame(rows)
    with matplotlib.style.context(["default", STYLE]):
        ours = df.dropna(subset=["sim", "elr"]) if not df.empty else df
        paper = df.dropna(subset=["pub_sim", "pub_elr"]) if not df.empty else df
        if ours.empty and paper.empty:
            return _empty(Figure(figsize=(4, 1.5)), "no domain similarity with an optimal ELR in this experiment")
        fig = Figure(figsize=(5.6, 3.6), layout="constrained")
        ax = fig.subplots()
        palette = matplotlib.color_sequences["tab10"]
        models = list(dict.fromkeys([*ours["model"], *paper["model"]]))
        for i, model in enumerate(models):
            color = palette[i % len(palette)]
            for frame, (x, y), style in ((ours, ("sim", "elr"), {"mfc": color}),
                                         (paper, ("pub_sim", "pub_elr"), {"mfc": "none"})):
                part = frame[frame["model"] == model]
                if part.empty:
                    continue
                who = "ours" if frame is ours else "Li et al. 2020"
                ax.plot(part[x], part[y], "o", ms=6, color=color, mec=color, label=f"{model} ({who})", **style)
                for r in part.itertuples(index=False):
                    ax.annotate(r.dataset, (getattr(r, x), getattr(r, y)), xytext=(3, 2), textcoords="offset points",
                                fontsize=5, color=color)
        ax.set_yscale("log")
        ax.set_xlabel("domain similarity to the source, exp(-0.01 EMD)")
        ax.set_ylabel("optimal ELR (grid point chosen on ID val)")
        fig.legend(loc="outside right upper", frameon=False)
    return fig
