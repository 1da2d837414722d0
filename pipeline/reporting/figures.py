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
from pipeline.reporting import names
from pipeline.reporting.aggregate import headline
from pipeline.reporting.robustness import points, predicted_ood
from pipeline.reporting.style import MARKERS, WISE_FT_FACE, method_styles, style_of

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.2,
         "pdf.fonttype": 42, "svg.hashsalt": "pipeline", "figure.dpi": 100}
PNG_DPI = 150
# Metadata a backend would otherwise stamp with the current date / time.
PDF_METADATA = {"CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}
# Row kinds drawn as points (oracles are in the table; as points they would suggest attainable models).
POINT_KINDS = ("zeroshot", "lp", "ft", "soup", "wise_ft")
# The frame is the points' extent (with their error bars) plus this share of it on each side, at least
# MIN_PAD points; a WiSE-FT curve may leave it, and an arrow at the edge says where it goes.
PAD = 0.12
MIN_PAD = 0.5

# fontTools logs every font subset at INFO, which would bury the stage's own log lines.
logging.getLogger("fontTools").setLevel(logging.WARNING)


def _stat(summary: pd.DataFrame, row: str, quantity: str) -> tuple[float, float]:
    hit = summary[(summary["row"] == row) & (summary["quantity"] == quantity)]
    if hit.empty:
        return math.nan, math.nan
    std = float(hit["std"].iloc[0])
    return 100 * float(hit["mean"].iloc[0]), 0.0 if math.isnan(std) else 100 * std


def method_points(summary: pd.DataFrame, id_q: str = "id_acc", ood_q: str = "ood_acc") -> pd.DataFrame:
    """The drawn rows of one dataset/model: kind, method, row, label, x, xerr, y, yerr (percent)."""
    out = []
    for r in summary.drop_duplicates("row").itertuples(index=False):
        if r.kind not in POINT_KINDS:
            continue
        (x, xerr), (y, yerr) = _stat(summary, r.row, id_q), _stat(summary, r.row, ood_q)
        if not (math.isnan(x) or math.isnan(y)):
            out.append({"kind": r.kind, "method": r.method, "row": r.row, "label": r.label, "x": x, "xerr": xerr,
                        "y": y, "yerr": yerr})
    return pd.DataFrame(out, columns=["kind", "method", "row", "label", "x", "xerr", "y", "yerr"])


def frame(pts: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits ((x0, x1), (y0, y1)) that hold every point with its error bars, within [0, 100]."""
    limits = []
    for v, err in (("x", "xerr"), ("y", "yerr")):
        lo, hi = float((pts[v] - pts[err]).min()), float((pts[v] + pts[err]).max())
        pad = max(PAD * (hi - lo), MIN_PAD)
        limits.append((max(lo - pad, 0.0), min(hi + pad, 100.0)))
    return limits[0], limits[1]


def _inside(x: float, y: float, box) -> bool:
    (x0, x1), (y0, y1) = box
    return x0 <= x <= x1 and y0 <= y <= y1


def _exit_point(inner: tuple[float, float], outer: tuple[float, float], box) -> tuple[float, float]:
    """Where the segment from ``inner`` (in the frame) to ``outer`` (outside it) crosses the frame's edge."""
    (x0, x1), (y0, y1) = box
    (ax, ay), (bx, by) = inner, outer
    t = 1.0
    for a, b, lo, hi in ((ax, bx, x0, x1), (ay, by, y0, y1)):
        if b < lo:
            t = min(t, (lo - a) / (b - a))
        elif b > hi:
            t = min(t, (hi - a) / (b - a))
    return ax + t * (bx - ax), ay + t * (by - ay)


def off_frame(curve: pd.DataFrame, box) -> list[tuple[tuple[float, float], tuple[float, float], pd.DataFrame]]:
    """Each run of consecutive curve points outside ``box``: (edge point, the in-frame neighbour, the run).

    ``curve`` has columns alpha, x, y in alpha order. A curve entirely outside the frame has no
    neighbour: its run comes with the frame's centre as both points.
    """
    inside = [_inside(x, y, box) for x, y in zip(curve["x"], curve["y"])]
    runs, i = [], 0
    while i < len(curve):
        if inside[i]:
            i += 1
            continue
        j = i
        while j < len(curve) and not inside[j]:
            j += 1
        run = curve.iloc[i:j]
        near = j if j < len(curve) else i - 1          # the in-frame neighbour, toward alpha = 1 first
        if near < 0:
            centre = ((box[0][0] + box[0][1]) / 2, (box[1][0] + box[1][1]) / 2)
            runs.append((centre, centre, run))
        else:
            far = i if near == j else j - 1              # the run's point adjacent to the neighbour
            inner = (float(curve["x"].iloc[near]), float(curve["y"].iloc[near]))
            runs.append((_exit_point(inner, (float(curve["x"].iloc[far]), float(curve["y"].iloc[far])), box),
                         inner, run))
        i = j
    return runs


def _draw_curves(ax, curves: pd.DataFrame, methods: list[str], styles: dict, box, id_q: str, ood_q: str) -> None:
    """WiSE-FT curves from alpha 0 to 1; the parts outside the frame end in an arrow with their values."""
    for k, m in enumerate(methods):
        c = curves[curves["method"] == m].pivot_table(index="alpha", columns="quantity", values="mean")
        if not {id_q, ood_q} <= set(c.columns):
            continue
        c = c.sort_index()
        curve = pd.DataFrame({"alpha": c.index, "x": 100 * c[id_q].to_numpy(), "y": 100 * c[ood_q].to_numpy()})
        st = style_of(styles, m)
        ax.plot(curve["x"], curve["y"], "-", marker=".", ms=4, color=st.color, alpha=0.7, zorder=2, clip_on=True)
        for n, (edge, inner, run) in enumerate(off_frame(curve, box)):
            text = "\n".join(rf"$\alpha$={r.alpha:g}: ({r.x:.1f}, {r.y:.1f})" for r in run.itertuples(index=False))
            # The arrow runs along the curve into the edge; its text sits inside the frame.
            ax.annotate("", xy=edge, xytext=inner, arrowprops={"arrowstyle": "->", "color": st.color, "lw": 0.9},
                        annotation_clip=False, zorder=4)
            # The text sits inside the frame beside the arrow's head, on a box the curve runs under.
            (x0, x1), (y0, y1) = box
            left, top = edge[0] <= (x0 + x1) / 2, edge[1] >= (y0 + y1) / 2
            shift = 14 * (k + n)   # a second curve's label stacks beside the first one's
            ax.annotate(text, xy=edge, xytext=(6 if left else -6, -6 - shift if top else 6 + shift),
                        textcoords="offset points", fontsize=6, color=st.color, ha="left" if left else "right",
                        va="top" if top else "bottom", zorder=5,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": st.color, "lw": 0.5, "alpha": 0.9})


def _draw_points(ax, pts: pd.DataFrame, styles: dict) -> None:
    for p in pts.itertuples(index=False):
        st = style_of(styles, p.method)
        wise = p.kind == "wise_ft"
        ax.errorbar(p.x, p.y, xerr=p.xerr, yerr=p.yerr, fmt=st.marker, ms=8 if wise else 6, color=st.color,
                    mfc=WISE_FT_FACE if wise else st.color, mec=st.color if wise else "white", mew=1.0 if wise else 0.6,
                    capsize=2, elinewidth=0.8, zorder=3, label=p.label)


def id_vs_ood_figure(summary: pd.DataFrame, curves: pd.DataFrame, methods: list[str], cfg: dict | None = None
                     ) -> Figure:
    """One panel per dataset/model: headline ID accuracy (x) vs OOD accuracy (y), in percent.

    The frame holds the table rows' points; WiSE-FT curves that leave it end in an arrow at the edge
    labelled with the alphas and (ID, OOD) accuracies outside it.
    """
    cfg = cfg or {}
    pairs = list(summary[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None))
    styles = method_styles(methods)
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(3.8 * max(len(pairs), 1) + 2.1, 3.4), layout="constrained")
        axes = fig.subplots(1, max(len(pairs), 1), squeeze=False)[0]
        for ax, (dataset, model) in zip(axes, pairs):
            id_q, ood_q = headline(cfg, dataset, "id"), headline(cfg, dataset, "ood")
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            cpart = curves[(curves["dataset"] == dataset) & (curves["model"] == model)]
            pts = method_points(part, id_q, ood_q)
            if pts.empty:
                continue
            box = frame(pts)
            ax.set_xlim(*box[0])
            ax.set_ylim(*box[1])
            _draw_curves(ax, cpart, [m for m in methods if m in set(part["method"])], styles, box, id_q, ood_q)
            _draw_points(ax, pts, styles)
            if not cpart.empty:
                # A legend entry for the curves, drawn as a line without data.
                ax.plot([], [], "-", marker=".", color="grey", label=r"WiSE-FT, $\alpha$ = 0$\to$1")
            ax.set_title(names.pair(dataset, model))
            ax.set_xlabel(names.quantity(id_q))
            ax.set_ylabel(names.quantity(ood_q) + (", mean over domains" if ood_q == "ood_acc" else ""))
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


def effective_robustness_figure(summary: pd.DataFrame, fits: pd.DataFrame, methods: list[str]) -> Figure:
    """Per dataset: OOD against ID accuracy on logit axes, every model and method, and the linear fit.

    Colour and marker are the method's (:mod:`pipeline.reporting.style`); with several models the
    marker tells the model apart instead, and the legend names it.
    """
    datasets = list(fits["dataset"]) or ["(none)"]
    styles = method_styles(methods)
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(3.8 * len(datasets) + 2.1, 3.4), layout="constrained")
        axes = fig.subplots(1, len(datasets), squeeze=False)[0]
        for ax, fit in zip(axes, fits.itertuples(index=False)):
            pts = points(summary, fit.dataset, fit.id_quantity, fit.ood_quantity)
            models = list(dict.fromkeys(pts["model"]))
            for p in pts.itertuples(index=False):
                st = style_of(styles, p.method)
                marker = st.marker if len(models) == 1 else MARKERS[models.index(p.model) % len(MARKERS)]
                wise = p.kind == "wise_ft"
                ax.plot(p.id, p.ood, marker, ms=7 if wise else 5, color=st.color,
                        mfc=WISE_FT_FACE if wise else st.color, mec=st.color if wise else "white",
                        mew=1.0 if wise else 0.5, label=f"{p.model}: {p.label}" if len(models) > 1 else p.label,
                        zorder=3)
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
            ax.set_title(names.dataset(fit.dataset))
            ax.set_xlabel(f"{names.quantity(fit.id_quantity)}, logit axis")
            ax.set_ylabel(f"{names.quantity(fit.ood_quantity)}, logit axis")
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
