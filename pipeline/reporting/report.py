"""Stage ``report``: tidy results, the LaTeX table, the ID-vs-OOD figure, dvc metrics.

Inputs:
  ``lp``        ``results/{dataset}/{model}/lp/metrics.csv`` of every dataset/model
  ``zeroshot``  ``results/{dataset}/{model}/zeroshot/metrics.csv`` of every OpenCLIP model/dataset
  ``evaluate``  ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/metrics.csv`` of every run
  ``wise_ft``   ``.../seed{seed}/wise_ft.csv`` (alpha grid, plus the alphas chosen on ID val
                and, as an oracle, on OOD val)
  ``soup``      ``results/{dataset}/{model}/soup/seed{seed}/metrics.csv`` (uniform and greedy soups)
  ``runs``      ``.../seed{seed}/run.json`` (optimizer and learning rates for the table's note)
  ``layers``    ``.../seed{seed}/layers.csv`` (per-layer change and SPD activity)
  ``grad_norms`` ``results/{dataset}/{model}/grad_norms.csv`` (freeze-embed analysis)
  ``templates`` every table template of ``paper/templates/`` but the LP-FT theory one
Outputs:
  ``results``    ``results/report/results.csv``: every tidy row, concatenated and sorted
  ``metrics``    ``results/report/metrics.json``: ``{dataset: {model: {row: {id_acc, ood_acc}}}}``
                 (means over seeds, fractions) for ``dvc metrics show``
  ``table_<name>`` ``paper/tables/<name>.tex`` from ``paper/templates/<name>.tex.j2`` (the results
                 table: ``results``, ``\\label{tab:results}``)
  ``figure``     ``paper/figures/id_vs_ood.pdf``; ``figure_png`` the same as PNG for ``dvc plots``
  ``grad_norms`` ``paper/figures/grad_norms.pdf``: per-layer gradient norms at the start of fine-tuning
  ``layers``     ``paper/figures/layers.pdf``: per-layer change from pretrained, SPD activity
Params: ``report.title``, ``report.labels`` ({method: display name}), ``report.id_split``
(default ``id_test``), ``report.ood_split`` (default ``ood_test``), and the selection
split and metric of grid points (``val_split``, ``ood_val_split``, ``selection_metric``);
``experiment.methods`` orders the rows.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.io import write_csv, write_json, write_text
from pipeline.job import parse_job
from pipeline.reporting.aggregate import (
    metrics_tree,
    read_runs,
    read_tidy,
    select_grid_points,
    summarise,
    wise_ft_curves,
)
from pipeline.reporting.figures import id_vs_ood_figure, save_figure
from pipeline.reporting.layer_figures import grad_norms_figure, layer_summary, layers_figure, read_layers
from pipeline.reporting.tables import render_template, table_context

log = logging.getLogger(__name__)

REPORT_DEFAULTS = {"title": "Robust fine-tuning results", "labels": {}, "id_split": "id_test",
                   "ood_split": "ood_test"}


def _paths(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("report", argv)
    report_cfg = {**REPORT_DEFAULTS, **(job.params.get("report") or {})}
    methods = list(job.params["experiment"]["methods"])
    results = read_tidy([p for key in ("lp", "zeroshot", "evaluate", "wise_ft", "soup")
                         for p in _paths(job.inputs.get(key, []))])
    if results.empty:
        raise ValueError("report: no metric rows in the input CSVs")
    chosen = select_grid_points(results, report_cfg)
    summary = summarise(results, report_cfg, methods, chosen)
    curves = wise_ft_curves(results, report_cfg, chosen)
    runs = read_runs(_paths(job.inputs["runs"]))
    labels = report_cfg.get("labels") or {}

    write_csv(job.outputs["results"], results)
    write_json(job.outputs["metrics"], metrics_tree(summary))
    context = table_context(summary, runs, report_cfg, methods, chosen)
    for template in _paths(job.inputs["templates"]):
        name = Path(template).name.removesuffix(".tex.j2")
        write_text(job.outputs[f"table_{name}"], render_template(template, context))
    save_figure(id_vs_ood_figure(summary, curves, methods), job.outputs["figure"], job.outputs["figure_png"])
    norms = pd.concat([pd.read_csv(p) for p in _paths(job.inputs["grad_norms"])], ignore_index=True)
    save_figure(grad_norms_figure(norms), job.outputs["grad_norms"])
    save_figure(layers_figure(layer_summary(read_layers(_paths(job.inputs["layers"])), chosen), labels, methods),
                job.outputs["layers"])
    log.info("report: %d tidy rows, %d table rows -> %s", len(results), summary["row"].nunique(),
             ", ".join(job.outputs.values()))
    return 0
