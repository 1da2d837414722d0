"""Per-layer views of fine-tuning: how far each layer moved, and where SPD projected.

Input is the concatenated ``layers.csv`` of the runs (one row per parameter
tensor, see :mod:`pipeline.training.finetune`). Per layer group (input to output,
:func:`pipeline.models.layers.layer_groups`) and seed:

* relative change ``sqrt(sum ||theta - theta_0||^2) / sqrt(sum ||theta_0||^2)`` over the
  group's tensors: freeze-embed's frozen groups sit at exactly 0, and LP-FT's
  smaller feature distortion shows up as a lower curve (Kumar et al. 2022);
* SPD activity: the fraction of steps on which SPD's projection applied, averaged
  over the group's tensors weighted by their size.

Seeds are then averaged. Only each method's grid point chosen on ID val is drawn.
:func:`grad_norms_figure` draws the per-layer gradient norms at the start of fine-tuning
(:mod:`pipeline.analysis.grad_norms`).
"""
from __future__ import annotations

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.reporting import names
from pipeline.reporting.figures import STYLE
from pipeline.reporting.style import method_styles, style_of

# Methods whose curves coincide (SGD and SGDP, AdamW and AdamP move the layers alike) would hide
# each other: each method's points are shifted by this much of a group slot, around the group.
DODGE = 0.5

LAYER_COLUMNS = ["dataset", "model", "method", "hp", "seed", "param", "group", "numel", "frozen", "init_norm",
                 "delta_norm", "spd_projected"]


def read_layers(paths: list[str]) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype={"group": str, "hp": str, "method": str}, keep_default_na=False,
                          na_values={"spd_projected": ["", "nan", "NaN"]}) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LAYER_COLUMNS)


def layer_summary(layers: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, method, group): index, relative change and SPD activity, mean over seeds."""
    if layers.empty:
        return pd.DataFrame(columns=["dataset", "model", "method", "group_index", "group", "rel_change",
                                     "spd_projected", "frozen"])
    df = layers.merge(chosen[["dataset", "model", "method", "id_hp"]], on=["dataset", "model", "method"])
    df = df[df["hp"] == df["id_hp"]]
    df = df.assign(group=df["group"].replace("", "(all)"), d2=df["delta_norm"] ** 2, i2=df["init_norm"] ** 2,
                   w_spd=df["spd_projected"] * df["numel"], n_spd=np.where(df["spd_projected"].notna(), df["numel"], 0))
    keys = ["dataset", "model", "method", "group"]
    per_seed = df.groupby(keys + ["seed"], sort=False).agg(
        d2=("d2", "sum"), i2=("i2", "sum"), w_spd=("w_spd", "sum"), n_spd=("n_spd", "sum"),
        frozen=("frozen", "all")).reset_index()
    per_seed["rel_change"] = np.sqrt(per_seed["d2"]) / np.sqrt(per_seed["i2"]).clip(lower=1e-12)
    per_seed["spd_projected"] = per_seed["w_spd"] / per_seed["n_spd"].where(per_seed["n_spd"] > 0)
    out = per_seed.groupby(keys, sort=False).agg(rel_change=("rel_change", "mean"),
                                                  spd_projected=("spd_projected", "mean"),
                                                  frozen=("frozen", "all")).reset_index()
    # Group order = order of first appearance, i.e. the model's input-to-output order.
    out["group_index"] = out.groupby(["dataset", "model", "method"], sort=False).cumcount()
    return out[["dataset", "model", "method", "group_index", "group", "rel_change", "spd_projected", "frozen"]]


def layers_figure(summary: pd.DataFrame, labels: dict[str, str], methods: list[str]) -> Figure:
    """Top row: relative change per layer group (log scale); bottom row: SPD activity per group.

    Every method has its colour, marker and line style (:mod:`pipeline.reporting.style`) and its
    points a small horizontal offset, so that methods with the same values stay visible side by side.
    """
    pairs = list(summary[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None)) or [("", "")]
    styles = method_styles(methods)
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(4.6 * len(pairs) + 2.1, 5.2), layout="constrained")
        axes = fig.subplots(2, len(pairs), squeeze=False, sharex="col")
        for col, (dataset, model) in enumerate(pairs):
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
            top, bottom = axes[0][col], axes[1][col]
            drawn = [m for m in methods if m in set(part["method"])]
            for k, m in enumerate(drawn):
                r = part[part["method"] == m].sort_values("group_index")
                x = r["group_index"] + DODGE * ((k + 0.5) / len(drawn) - 0.5)
                st = style_of(styles, m)
                line = {"marker": st.marker, "ms": 3.5, "color": st.color, "linestyle": st.linestyle, "lw": 1.0,
                        "label": labels.get(m, m)}
                moved = r["rel_change"].where(r["rel_change"] > 0)   # frozen groups: a gap on the log axis
                top.plot(x, moved, **line)
                if r["spd_projected"].notna().any():
                    bottom.plot(x, 100 * r["spd_projected"], **line)
            top.set_yscale("log")
            top.set_title(names.pair(dataset, model))
            top.set_ylabel(r"relative change $\|\theta-\theta_0\| / \|\theta_0\|$")
            bottom.set_ylabel("SPD projection applied (% of steps)")
            bottom.set_xlabel("layer group (input $\\to$ output)")
            if part["spd_projected"].isna().all():
                bottom.text(0.5, 0.5, "no SPD runs", ha="center", va="center", transform=bottom.transAxes)
            if not part.empty:
                ticks = part.drop_duplicates("group_index").sort_values("group_index")
                bottom.set_xticks(ticks["group_index"], ticks["group"], rotation=90, fontsize=6)
        entries: dict = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        fig.legend(list(entries.values()), list(entries), loc="outside right upper", frameon=False)
    return fig


def grad_norms_figure(df: pd.DataFrame) -> Figure:
    """Bar plot of ``grad_norm_per_param`` per group index (log scale), embedding groups highlighted.

    One panel per backbone when a ``model`` column is present.
    """
    parts = list(df.groupby("model", sort=False)) if "model" in df.columns else [("", df)]
    with matplotlib.style.context(["default", STYLE]):
        width = max(3.5, 0.28 * max(len(p) for _, p in parts) + 1.2)
        fig = Figure(figsize=(width, 2.4 * len(parts) + 0.3), layout="constrained")
        axes = fig.subplots(len(parts), 1, squeeze=False)[:, 0]
        for ax, (name, part) in zip(axes, parts):
            part = part.sort_values("index")
            # Empty groups (a ViT's Identity norm_pre) keep their slot but draw no bar.
            y = part["grad_norm_per_param"].fillna(0.0)
            colors = ["tab:red" if e else "tab:blue" for e in part["embed"]]
            ax.bar(part["index"], y.where(y > 0), color=colors, width=0.8)
            ax.set_xticks(part["index"], part["group"], rotation=90, fontsize=6)
            if (y > 0).any():
                ax.set_yscale("log")
            ax.set_ylabel(r"$\|g\|_2/\sqrt{n}$")
            if name:
                ax.set_title(f"model {name}")
        fig.suptitle("gradient norm per parameter at the start of fine-tuning; red: embedding", fontsize=7)
    return fig
