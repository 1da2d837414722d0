"""Render ``dvc.yaml`` from the stage registry (``python -m pipeline export-dvc``).

Each Snakemake job becomes one DVC stage named ``<stage>--<wildcard values>`` with
the same command, the same inputs (source files included) as deps, the same
outputs, and as params deps the params.yaml keys it reads and the registry defaults it
resolves (from ``params.defaults.yaml``, rendered here too: :mod:`pipeline.config.defaults`).
Both files are committed; ``tests/test_dag_sync.py`` checks they equal a fresh render, and
DVC's ``check_params`` stage refuses to run a ``dvc.yaml`` that no longer matches params.yaml
or the code (:func:`stale`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.config import DEFAULT_PARAMS, load_params
from pipeline.config.defaults import DEFAULTS_FILE, defaults_tree
from pipeline.config.defaults import HEADER as DEFAULTS_HEADER
from pipeline.config.frozen import freeze
from pipeline.stages.registry import STAGES, STAGES_BY_NAME, flatten, job_inputs

HEADER = """\
# GENERATED from pipeline/stages.py and params.yaml; do not edit by hand.
# Re-render after changing the experiment grid:  python -m pipeline export-dvc [--params FILE]
# Value edits in params.yaml (a batch size, say) need no re-render, but those a run's name spells do
# (a learning rate: a new run): `python -m pipeline exp-run -S key=value` re-renders, then runs DVC.
"""
# DVC deletes a stage's outputs before running its command, so params.yaml is
# validated by a stage of its own, upstream of every other one: a malformed file
# stops `dvc repro` before any job starts. Its marker's content is constant, so a
# valid edit re-runs only the stages whose own keys changed. (Snakemake validates
# while parsing the Snakefile, so this stage exists in dvc.yaml only.)
CHECK_STAGE = "check_params"
CHECK_MARKER = "results/params.ok"
# What validation reads: the schema and the keys, defaults and names of the registries, the checks of
# the models against the data (pipeline/tools/preflight.py), and what decides this file's content (the
# stage registry, code tracking, this renderer): any edit of them re-checks that dvc.yaml is current.
CHECK_CODE = ["pipeline/config/params.schema.yaml", "pipeline/config/load.py", "pipeline/config/schema.py",
              "pipeline/config/yaml_reader.py", "pipeline/config/schema_errors.py", "pipeline/config/settings.py",
              "pipeline/config/defaults.py", "pipeline/methods/registry.py",
              "pipeline/data/sources/__init__.py", "pipeline/tools/preflight.py",
              "pipeline/reporting/layouts/__init__.py", "pipeline/reporting/reference.py",
              "pipeline/stages/registry.py", "pipeline/stages/code.py", "pipeline/tools/dvc_render.py"]
# Metrics and plots are cached like every output, so that `dvc exp show` and `dvc plots diff`
# read each experiment's values through its dvc.lock (git never tracks generated files).
METRICS_OUTPUTS = {("report", "metrics")}
PLOT_OUTPUTS = {("report", "figure_png"), ("report", "er_figure_png"), ("report", "grad_norms_png"),
                ("report", "layers_png")}


def render(cfg: dict, params_file: str = DEFAULT_PARAMS) -> str:
    cfg = freeze(cfg)   # planned on: answers per config computed once (pipeline.config.frozen)
    stages: dict[str, dict] = {CHECK_STAGE: {
        "cmd": f"python -m pipeline validate {params_file} --deep --rendered --write {CHECK_MARKER}",
        "deps": [params_file, *CHECK_CODE, *((cfg.get("report") or {}).get("reference") or [])],
        "outs": [{CHECK_MARKER: {"cache": False}}]}}
    produced = {p for st in STAGES for wc in st.jobs(cfg) for p in st.output_paths(wc).values()}
    for st in STAGES:
        for wc in st.jobs(cfg):
            # The stage's threads, as Snakemake passes them: on a CPU the thread count changes the
            # order of float sums, so both runners must use the same one to write the same bytes.
            entry: dict = {"cmd": f"PIPELINE_THREADS={st.threads} {st.command(wc, params_file, cfg)}"}
            deps = flatten(job_inputs(st, cfg, wc))
            if not set(flatten(st.inputs(cfg, wc))) & produced:  # a root of the DAG: runs after validation
                deps.insert(0, CHECK_MARKER)
            if deps:
                entry["deps"] = deps
            keys, defaults = st.param_keys(cfg, wc), st.default_keys(cfg, wc)
            params: list = (keys if params_file == DEFAULT_PARAMS else [{params_file: keys}]) if keys else []
            if defaults:
                params.append({DEFAULTS_FILE: defaults})
            if params:
                entry["params"] = params
            outs, metrics, plots = [], [], []
            for name, path in st.output_paths(wc).items():
                if name in st.measured:
                    continue   # a measurement, not a result: DVC must not re-run a job because it differs
                if (st.name, name) in METRICS_OUTPUTS:
                    metrics.append(path)
                elif (st.name, name) in PLOT_OUTPUTS:
                    plots.append(path)
                else:
                    outs.append(path)
            entry["outs"] = outs
            if metrics:
                entry["metrics"] = metrics
            if plots:
                entry["plots"] = plots
            stages[st.job_id(wc)] = entry
    return HEADER + yaml.safe_dump({"stages": stages, "plots": plot_definitions(cfg)}, sort_keys=False, width=120)


def plot_definitions(cfg: dict) -> list[dict]:
    """Top-level ``plots:`` for ``dvc plots show``: training curves per method, the ID-vs-OOD scatter.

    A method's curves: every seed's (and grid point's) training loss at every logged optimizer step
    (``steps.csv``) and its ID-val accuracy after each epoch (``history.csv``), both against the step.
    """
    finetune, report = STAGES_BY_NAME["finetune"], STAGES_BY_NAME["report"]
    curves: dict[str, dict] = {}
    for wc in finetune.jobs(cfg):
        name = f"training curves: {wc['dataset']}/{wc['model']}/{wc['method']}"
        entry = curves.setdefault(name, {"x": "step", "y": {}, "title": name, "x_label": "optimizer step",
                                         "y_label": "training loss (each step), ID-val accuracy (each epoch)"})
        paths = finetune.output_paths(wc)
        entry["y"][paths["steps"]] = ["train_loss"]
        entry["y"][paths["history"]] = ["id_val_acc"]
    scatter = {report.outputs["scatter"]: {
        "template": "scatter", "x": "id_acc", "y": ["ood_acc", "ood_fit"],
        "title": "OOD vs ID accuracy (%) of every table row, and the logit-linear fit",
        "x_label": "ID accuracy (%)", "y_label": "OOD accuracy (%)"}}
    return [{k: v} for k, v in curves.items()] + [scatter]


def render_defaults() -> str:
    """``params.defaults.yaml``: every registry default (:func:`pipeline.config.defaults.defaults_tree`)."""
    return DEFAULTS_HEADER + yaml.safe_dump(defaults_tree(), sort_keys=False, width=120)


def stale(cfg: dict, params_file: str, dvc_yaml: str = "dvc.yaml") -> str | None:
    """Why ``dvc.yaml`` or ``params.defaults.yaml`` differ from a fresh render (None: both current)."""
    for path, want in ((dvc_yaml, render(cfg, params_file)), (DEFAULTS_FILE, render_defaults())):
        if not Path(path).is_file() or Path(path).read_text() != want:
            given = "" if params_file == DEFAULT_PARAMS else f" --params {params_file}"
            return (f"{path} does not match {params_file} and the code (a grid, list, default or a value that names "
                    f"runs changed); run `python -m pipeline export-dvc{given}`, then `dvc repro` (an experiment: "
                    "`python -m pipeline exp-run -S key=value`)")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline export-dvc", description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--output", default="dvc.yaml", help="'-' for stdout (and no params.defaults.yaml)")
    args = p.parse_args(argv)
    text = render(load_params(args.params), args.params)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from pipeline.io import write_text

        write_text(args.output, text)
        write_text(DEFAULTS_FILE, render_defaults())
    return 0
