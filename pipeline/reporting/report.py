"""Stage ``report``: tidy results, the LaTeX table, the ID-vs-OOD figure, dvc metrics.

Inputs:
  ``lp``        ``results/{dataset}/{model}/lp/metrics.csv`` of every dataset/model
  ``evaluate``  ``results/{dataset}/{model}/{method}/seed{seed}/metrics.csv`` of every run
  ``wise_ft``   ``.../seed{seed}/wise_ft.csv`` (alpha grid, plus the alphas chosen on ID val
                and, as an oracle, on OOD val)
  ``runs``      ``.../seed{seed}/run.json`` (optimizer and learning rates for the table's note)
  ``templates`` ``paper/templates/results_table.tex.j2``
Outputs:
  ``results``    ``results/report/results.csv``: every tidy row, concatenated and sorted
  ``metrics``    ``results/report/metrics.json``: ``{dataset: {model: {row: {id_acc, ood_acc}}}}``
                 (means over seeds, fractions) for ``dvc metrics show``
  ``table``      ``paper/tables/results.tex`` (``\\label{tab:results}``)
  ``figure``     ``paper/figures/id_vs_ood.pdf``; ``figure_png`` the same as PNG for ``dvc plots``
Params: ``report.title``, ``report.labels`` ({method: display name}), ``report.id_split``
(default ``id_test``) and ``report.ood_split`` (default ``ood_test``).
"""
from __future__ import annotations

import logging

from pipeline.cli import parse_job
from pipeline.io import write_csv, write_json, write_text
from pipeline.reporting.aggregate import metrics_tree, read_runs, read_tidy, summarise, wise_ft_curves
from pipeline.reporting.figures import id_vs_ood_figure, save_figure
from pipeline.reporting.tables import render_table

log = logging.getLogger(__name__)

REPORT_DEFAULTS = {"title": "Robust fine-tuning results", "labels": {}, "id_split": "id_test",
                   "ood_split": "ood_test"}


def _paths(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("report", argv)
    report_cfg = {**REPORT_DEFAULTS, **job.cfg.get("report", {})}
    methods = list(job.cfg["experiment"]["methods"])
    results = read_tidy(_paths(job.inputs["lp"]) + _paths(job.inputs["evaluate"]) + _paths(job.inputs["wise_ft"]))
    if results.empty:
        raise ValueError("report: no metric rows in the input CSVs")
    summary = summarise(results, report_cfg, methods)
    curves = wise_ft_curves(results, report_cfg)
    runs = read_runs(_paths(job.inputs["runs"]))

    write_csv(job.outputs["results"], results)
    write_json(job.outputs["metrics"], metrics_tree(summary))
    write_text(job.outputs["table"], render_table(_paths(job.inputs["templates"])[0], summary, runs, report_cfg,
                                                  methods))
    save_figure(id_vs_ood_figure(summary, curves, methods), job.outputs["figure"], job.outputs["figure_png"])
    log.info("report: %d tidy rows, %d table rows -> %s", len(results), summary["row"].nunique(),
             ", ".join(job.outputs.values()))
    return 0
