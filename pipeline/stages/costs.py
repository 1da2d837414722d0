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

from pipeline.io import write_csv, write_text
from pipeline.reporting.costs import read_costs, summary, table_context
from pipeline.reporting.tables import render_template
from pipeline.stages.job import parse_job


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
