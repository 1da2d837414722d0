"""Stage ``costs``: what each method's fine-tunes cost, measured on the machine that ran them.

Inputs: every run's ``cost.json`` (:mod:`pipeline.training.finetune`: images/s, training seconds,
GPUs, peak memory) and ``paper/templates/costs.tex.j2``.
Outputs: ``results/report/costs.csv`` (one tidy row per run) and ``paper/tables/costs.tex`` (per
method: runs, GPU-hours = training time x GPUs summed over runs, images/s and peak memory as the
median and max over runs). This is the freeze-embed paper's memory argument, measured.
These figures vary from run to run, so they stay out of every result: only this stage (and the
paper that includes its table) reads them.
Params: ``report.labels`` (display names), ``experiment.methods`` (row order).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.io import write_csv, write_text
from pipeline.job import parse_job
from pipeline.reporting.tables import render_template

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


def main(argv: list[str] | None = None) -> int:
    job = parse_job("costs", argv)
    inputs = job.inputs["costs"]
    costs = read_costs([inputs] if isinstance(inputs, str) else list(inputs))
    write_csv(job.outputs["costs"], costs)
    labels = (job.params.get("report") or {}).get("labels") or {}
    table = summary(costs, list(job.params["experiment"]["methods"]))
    devices = sorted(set(costs["device"].astype(str)))
    write_text(job.outputs["table"], render_template(job.inputs["template"], table_context(table, labels, devices)))
    return 0
