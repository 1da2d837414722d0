"""Command line: ``python -m pipeline <stage> --<wildcard> VALUE ...`` and tools.

Every stage module exposes ``main(argv) -> int``; :func:`parse_job` gives it the
validated config, its wildcard values, and its input/output paths taken from the
stage registry, so paths are defined in one place only.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass

from pipeline.config import ParamsError, config_hash, load_params
from pipeline.io import Preempted, setup_logging
from pipeline.stages import STAGES, STAGES_BY_NAME, Stage, job_inputs, stage

log = logging.getLogger("pipeline")
PREEMPTED_EXIT = 75   # EX_TEMPFAIL


@dataclass(frozen=True)
class Job:
    """One job of a stage, resolved against params.yaml."""

    stage: Stage
    cfg: dict
    wildcards: dict[str, str]
    inputs: dict
    outputs: dict[str, str]
    params: dict
    config_hash: str

    @property
    def seed(self) -> int:
        return int(self.wildcards.get("seed", 0))


def parse_job(stage_name: str, argv: list[str] | None) -> Job:
    """Parse a stage's argv, validate params.yaml and resolve the job."""
    st = stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {st.name}", description=st.doc)
    for w in st.wildcards:
        parser.add_argument(f"--{w}", required=True)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    wc = {w: str(getattr(args, w)) for w in st.wildcards}
    for w, section in (("dataset", "datasets"), ("model", "models"), ("method", "methods")):
        if w in wc and wc[w] not in cfg[section]:
            raise ParamsError(f"{args.params}: {section}.{wc[w]}: not defined (--{w} {wc[w]})")
    if "hp" in wc:
        from pipeline.training.settings import hp_names

        names = hp_names(cfg["methods"][wc["method"]])
        if wc["hp"] not in names:
            raise ParamsError(f"{args.params}: methods.{wc['method']}: no grid point {wc['hp']!r} "
                              f"(its runs: {', '.join(names)})")
    values = st.param_values(cfg, wc)
    job = Job(st, cfg, wc, job_inputs(st, cfg, wc), st.output_paths(wc), values,
              config_hash({"stage": st.name, "wildcards": wc, "params": values}))
    set_threads()
    log.info("%s %s config_hash=%s", st.name, " ".join(f"{k}={v}" for k, v in wc.items()), job.config_hash)
    return job


def set_threads() -> int:
    """Use the threads the scheduler granted (PIPELINE_THREADS), else every core."""
    n = int(os.environ.get("PIPELINE_THREADS", 0) or os.cpu_count() or 1)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return n


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline validate", description="Validate params.yaml.")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--write", metavar="MARKER", help="on success, write this marker file (constant content)")
    args = p.parse_args(argv)
    load_params(args.params)
    if args.write:
        from pipeline.io import write_text

        write_text(args.write, f"{args.params} is valid (pipeline/schemas/params.schema.yaml)\n")
    print(f"{args.params}: OK")
    return 0


def _export_dvc(argv: list[str]) -> int:
    from pipeline.dvc_render import main as render_main

    return render_main(argv)


def _dvc_commit(argv: list[str]) -> int:
    from pipeline.dvc_commit import main as commit_main

    return commit_main(argv)


TOOLS = {"validate": _validate, "export-dvc": _export_dvc, "dvc-commit": _dvc_commit}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m pipeline <command> [options]\n\nstages:")
        for st in STAGES:
            print(f"  {st.name:14s} {st.doc}")
        print("tools:\n  validate       check params.yaml\n  export-dvc     render dvc.yaml from the registry\n"
              "  dvc-commit     record Snakemake's outputs in DVC, keeping their timestamps")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd in TOOLS:
            return TOOLS[cmd](rest)
        if cmd not in STAGES_BY_NAME:
            print(f"error: unknown command {cmd!r} (see python -m pipeline --help)", file=sys.stderr)
            return 2
        module = importlib.import_module(STAGES_BY_NAME[cmd].module)
        return int(module.main(rest) or 0)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        # A checkpoint was saved: exit "temporary failure" so that Snakemake's retry or Slurm's requeue resumes it.
        log.warning("%s", e)
        return PREEMPTED_EXIT
    except (FileNotFoundError, FloatingPointError) as e:
        # Missing data/weights and non-finite losses are user-facing: one clear line, no traceback.
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
