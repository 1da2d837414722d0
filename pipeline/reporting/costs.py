"""What each method's fine-tunes cost: tidy rows from every run's ``cost.json`` and a per-method summary.

GPU-hours are training time x GPUs summed over runs; images/s and peak memory the median and max over
runs (the freeze-embed paper's memory argument, measured). These figures vary from run to run, so
they stay out of every result: only the ``costs`` stage (and the paper that includes its table) reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["dataset", "model", "method", "hp", "seed", "device", "gpus", "images_per_s", "train_seconds",
           "gpu_hours", "peak_memory_bytes", "config_hash"]


def read_costs(paths: list[str]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(costs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per (dataset, model, method): runs, GPU-hours, train hours, median images/s, max peak memory (MiB)."""
    g = costs.groupby(["dataset", "model", "method"], sort=False)
    out = g.agg(runs=("seed", "size"), gpu_hours=("gpu_hours", "sum"), train_seconds=("train_seconds", "sum"),
                images_per_s=("images_per_s", "median"), peak_memory_bytes=("peak_memory_bytes", "max")).reset_index()
    out["train_hours"] = out["train_seconds"] / 3600
    out["peak_memory_mib"] = out["peak_memory_bytes"] / 2**20
    order = {m: i for i, m in enumerate(methods)}
    out["_o"] = out["method"].map(lambda m: order.get(m, len(order)))
    return out.sort_values(["dataset", "model", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def table_context(table: pd.DataFrame, labels, devices: list[str]) -> dict:
    rows = [{"dataset": r.dataset, "model": r.model, "method": labels.get(r.method, r.method), "runs": int(r.runs),
             "gpu_hours": f"{r.gpu_hours:.3f}", "train_hours": f"{r.train_hours:.3f}",
             "images_per_s": f"{r.images_per_s:.0f}", "peak_memory": f"{r.peak_memory_mib:.0f}"}
            for r in table.itertuples(index=False)]
    return {"rows": rows, "devices": ", ".join(devices)}
