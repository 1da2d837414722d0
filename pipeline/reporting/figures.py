"""The ID-vs-OOD figures: methods as points with WiSE-FT curves, and the effective-robustness fit.

Built on :class:`matplotlib.figure.Figure` without pyplot, so no GUI backend or
global figure state is involved (PDF and PNG are drawn by the non-interactive
pdf and Agg canvases). A fixed style is applied on top of matplotlib's defaults
so that a user's matplotlibrc cannot change the paper's figure, and the files
carry no dates, so re-running the report rewrites identical bytes.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import matplotlib.style
import matplotlib.ticker
import pandas as pd
from matplotlib.figure import Figure

from pipeline.io import atomic_path
from pipeline.reporting.robustness import points, predicted_ood

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.2,
         "pdf.fonttype": 42, "svg.hashsalt": "pipeline", "figure.dpi": 100}
PNG_DPI = 150
# Metadata a backend would otherwise stamp with the current date / time.
PDF_METADATA = {"CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}
LP_COLOR = "black"
SOUP_COLORS = {"uniform_soup": "dimgrey", "greedy_soup": "darkgoldenrod"}
MARKERS = {"zeroshot": "P", "lp": "s", "ft": "o", "soup": "D", "wise_ft": "*"}

# fontTools logs every font subset at INFO, which would bury the stage's own log lines.
logging.getLogger("fontTools").setLevel(logging.WARNING)


def _stat(summary: pd.DataFrame, row: str, quantity: str) -> tuple[float, float]:
    hit = summary[(summary["row"] == row) & (summary["quantity"] == quantity)]
    if hit.empty:
        return math.nan, math.nan
    std = float(hit["std"].iloc[0])
    return 100 * float(hit["mean"].iloc[0]), 0.0 if math.isnan(std) else 100 * std


def _draw_pair(ax, summary: pd.DataFrame, curves: pd.DataFrame, methods: list[str], colors: dict[str, str]) -> None:
    """One dataset/model: WiSE-FT curves, then method points on top of them."""
    for m in methods:
        c = curves[curves["method"] == m].pivot_table(index="alpha", columns="quantity", values="mean")
        if {"id_acc", "ood_acc"} <= set(c.columns):
            c = c.sort_index()
            x, y = 100 * c["id_acc"], 100 * c["ood_acc"]
            ax.plot(x, y, "-", marker=".", ms=4, color=colors[m], alpha=0.7, zorder=2)
            # Mark the pretrained end so the direction of the curve is readable.
            ax.annotate(rf"$\alpha$={c.index[0]:g}", (x.iloc[0], y.iloc[0]), xytext=(-3, 3),
                        textcoords="offset points", ha="right", fontsize=6, color=colors[m])
    for r in summary.drop_duplicates("row").itertuples(index=False):
        if r.kind not in MARKERS:
            continue  # oracles are in the table; as points they would suggest attainable models
        (x, xerr), (y, yerr) = _stat(summary, r.row, "id_acc"), _stat(summary, r.row, "ood_acc")
        if math.isnan(x) or math.isnan(y):
            continue
        color = LP_COLOR if r.kind in ("lp", "zeroshot") else SOUP_COLORS.get(r.method) or colors.get(r.method, "grey")
        marker = MARKERS[r.kind]
        size = 10 if r.kind == "wise_ft" else 6
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, ms=size, color=color, mec="white", mew=0.6,
                    capsize=2, elinewidth=0.8, zorder=3, label=r.label)


def id_vs_ood_figure(summary: pd.DataFrame, curves: pd.DataFrame, methods: list[str]) -> Figure:
    """One panel per dataset/model: ID accuracy (x) vs OOD accuracy (y), in percent."""
    pairs = list(summary[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None))
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(3.6 * max(len(pairs), 1) + 1.9, 3.2), layout="constrained")
        axes = fig.subplots(1, max(len(pairs), 1), squeeze=False)[0]
        palette = matplotlib.color_sequences["tab10"]
        colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
        for ax, (dataset, model) in zip(axes, pairs):
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            cpart = curves[(curves["dataset"] == dataset) & (curves["model"] == model)]
            _draw_pair(ax, part, cpart, [m for m in methods if m in set(part["method"])], colors)
            if not cpart.empty:
                # A legend entry for the curves, drawn as a line without data.
                ax.plot([], [], "-", marker=".", color="grey", label=r"WiSE-FT, $\alpha$ = 0$\to$1")
            ax.margins(x=0.08)  # room for the alpha labels at the curves' ends
            ax.set_title(f"{dataset} / {model}")
            ax.set_xlabel("ID accuracy (%)")
            ax.set_ylabel("OOD accuracy (%, mean over domains)")
        _shared_legend(fig, axes)
    return fig


def _shared_legend(fig: Figure, axes) -> None:
    """One legend for all panels (each label once), outside the axes so it never hides a point."""
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside right upper", frameon=False)


def save_figure(fig: Figure, pdf: str | Path, png: str | Path | None = None) -> None:
    """Write the figure as PDF (paper) and optionally PNG (dvc plots), atomically and without dates."""
    # Some settings (e.g. pdf.fonttype) are read at save time, not when drawing.
    with matplotlib.style.context(["default", STYLE]):
        with atomic_path(pdf) as tmp:
            fig.savefig(tmp, format="pdf", metadata=PDF_METADATA)
        if png is not None:
            with atomic_path(png) as tmp:
                fig.savefig(tmp, format="png", dpi=PNG_DPI, metadata=PNG_METADATA)


def effective_robustness_figure(summary: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """Per dataset: OOD against ID accuracy on logit axes, every model and method, and the linear fit."""
    datasets = list(fits["dataset"]) or ["(none)"]
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(3.6 * len(datasets) + 1.9, 3.2), layout="constrained")
        axes = fig.subplots(1, len(datasets), squeeze=False)[0]
        palette = matplotlib.color_sequences["tab10"]
        for ax, fit in zip(axes, fits.itertuples(index=False)):
            pts = points(summary, fit.dataset, fit.id_quantity, fit.ood_quantity)
            models = list(dict.fromkeys(pts["model"]))
            methods = list(dict.fromkeys(pts["method"]))
            for p in pts.itertuples(index=False):
                # colour: the method (as in the ID-vs-OOD figure); marker: the kind of row
                color = LP_COLOR if p.kind in ("lp", "zeroshot") else palette[methods.index(p.method) % len(palette)]
                ax.plot(p.id, p.ood, MARKERS.get(p.kind, "o"), ms=5, color=color, mec="white", mew=0.5,
                        label=f"{p.model}: {p.label}" if len(models) > 1 else p.label, zorder=3)
            if not math.isnan(fit.slope):
                lo, hi = pts["id"].min(), pts["id"].max()
                xs = [lo + (hi - lo) * i / 50 for i in range(51)]
                ax.plot(xs, predicted_ood(xs, fit.slope, fit.intercept), "--", color="grey", zorder=2,
                        label=f"fit: logit OOD = {fit.slope:.2f} logit ID {fit.intercept:+.2f}")
            ax.set_xscale("logit")
            ax.set_yscale("logit")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}"))
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(fit.dataset)
            ax.set_xlabel(f"ID accuracy (%, {fit.id_quantity}, logit axis)")
            ax.set_ylabel(f"OOD accuracy (%, {fit.ood_quantity}, logit axis)")
        _shared_legend(fig, axes)
    return fig


def scatter_table(summary: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """The points of the effective-robustness figure as a table (``dvc plots`` draws its scatter from it)."""
    frames = []
    for fit in fits.itertuples(index=False):
        pts = points(summary, fit.dataset, fit.id_quantity, fit.ood_quantity)
        fitted = (predicted_ood(pts["id"], fit.slope, fit.intercept) if not math.isnan(fit.slope)
                  else [math.nan] * len(pts))
        frames.append(pd.DataFrame({"dataset": fit.dataset, "model": pts["model"], "row": pts["row"],
                                    "label": pts["label"], "kind": pts["kind"], "id_acc": 100 * pts["id"],
                                    "ood_acc": 100 * pts["ood"], "ood_fit": 100 * pd.Series(fitted, dtype=float)
                                    .to_numpy()}))
    cols = ["dataset", "model", "row", "label", "kind", "id_acc", "ood_acc", "ood_fit"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
