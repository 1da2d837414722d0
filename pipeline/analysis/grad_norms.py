"""Per-layer gradient norms at the start of fine-tuning (Kumar et al., ICLR 2024, Fig. 2-style).

The paper's explanation of why SGD lags AdamW on modern backbones is that the
embedding layer's gradients are much larger than the rest of the network's at
the pretrained weights, so one SGD learning rate cannot suit both. This module
measures the per-group L2 gradient norm of the cross-entropy on one batch, using
the same layer groups as freeze-embed (:func:`pipeline.models.layers.layer_groups`).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from pipeline.cli import parse_job
from pipeline.data.shards import PreparedDataset
from pipeline.data.tensors import to_float
from pipeline.io import atomic_path, write_csv
from pipeline.models.backbone import default_device, init_head, model_from_config, normalization
from pipeline.models.layers import layer_groups
from pipeline.reporting.figures import PDF_METADATA, PNG_DPI, PNG_METADATA, STYLE

COLUMNS = ["group", "index", "n_params", "grad_norm", "grad_norm_per_param", "param_norm", "embed"]


def layer_grad_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, embed_k: int = 2) -> pd.DataFrame:
    """One row per layer group: gradient and weight norms of the batch loss at the current weights.

    ``images`` are float and already normalised. The model is put in eval mode:
    fine-tuning here runs with BatchNorm in eval mode (pretrained statistics), and
    eval mode also turns off dropout / drop-path, so the gradient is the one the
    first fine-tuning step sees, deterministic, and BN running stats are not
    updated. The previous train/eval flags are restored afterwards. Gradients are
    taken for every parameter, frozen ones included (requires_grad is restored),
    via ``torch.autograd.grad`` so nothing accumulates into ``.grad``; all
    ``.grad`` are cleared on return. ``grad_norm_per_param`` is NaN for empty groups.
    """
    groups = layer_groups(model)
    params = dict(model.named_parameters())
    modes = {m: m.training for m in model.modules()}
    flags = {n: p.requires_grad for n, p in params.items()}
    device = next(iter(params.values())).device
    try:
        model.eval()
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            names = list(params)
            grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)))
    finally:
        for m, training in modes.items():
            m.train(training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None

    rows = []
    with torch.no_grad():
        for i, (group, members) in enumerate(groups):
            n_params = sum(params[n].numel() for n in members)
            # A parameter off the loss path (unused) has zero gradient, not a missing one.
            g2 = sum(float(grads[n].double().pow(2).sum()) for n in members if grads[n] is not None)
            w2 = sum(float(params[n].detach().double().pow(2).sum()) for n in members)
            gn = math.sqrt(g2)
            rows.append({"group": group, "index": i, "n_params": n_params, "grad_norm": gn,
                         "grad_norm_per_param": gn / math.sqrt(n_params) if n_params else math.nan,
                         "param_norm": math.sqrt(w2), "embed": i < embed_k})
    return pd.DataFrame(rows, columns=COLUMNS)


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
                ax.set_title(str(name))
        fig.suptitle("gradient norm per parameter at the start of fine-tuning; red: embedding", fontsize=7)
    return fig


def plot_grad_norms(df: pd.DataFrame, path: str) -> None:
    """Write :func:`grad_norms_figure` to ``path`` (.pdf or .png), atomically and without timestamps."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("pdf", "png"):
        raise ValueError(f"plot_grad_norms: path must end in .pdf or .png, got {path!r}")
    fig = grad_norms_figure(df)
    with matplotlib.style.context(["default", STYLE]), atomic_path(out) as tmp:
        if fmt == "pdf":
            fig.savefig(tmp, format="pdf", metadata=PDF_METADATA)
        else:
            fig.savefig(tmp, format="png", dpi=PNG_DPI, metadata=PNG_METADATA)


def main(argv: list[str] | None = None) -> int:
    """Stage ``grad_norms``: one batch of training images, the pretrained backbone and a fresh head.

    Inputs: ``data/prepared/{dataset}``, ``data/weights/{model}.safetensors``.
    Output: ``results/{dataset}/{model}/grad_norms.csv`` (one row per layer group).
    Params: ``analysis.grad_norms.batch_size``, ``models.{model}``.
    """
    job = parse_job("grad_norms", argv)
    cfg, wc = job.cfg, job.wildcards
    torch.manual_seed(0)
    data = PreparedDataset(job.inputs["data"])
    model = model_from_config(cfg["models"][wc["model"]], data.num_classes, job.inputs["weights"])
    init_head(model, "random", None)
    model.to(default_device())
    train = data.split(data.info.get("train_split", "train"))
    n = min(int(((cfg.get("analysis") or {}).get("grad_norms") or {}).get("batch_size", 64)), len(train))
    idx = np.sort(np.random.default_rng(0).choice(len(train), size=n, replace=False))
    mean, std = normalization(model)
    df = layer_grad_norms(model, to_float(train.images[idx], mean, std), torch.tensor(train.labels[idx]))
    write_csv(job.outputs["grad_norms"], df.assign(dataset=wc["dataset"], model=wc["model"],
                                                   config_hash=job.config_hash))
    return 0
