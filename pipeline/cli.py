"""Command line: ``python -m pipeline <stage> --<wildcard> VALUE ...`` and tools.

Every stage module (``pipeline/stages/<name>.py``) exposes ``main(argv) -> int`` and gets its job
from :func:`pipeline.stages.job.parse_job`; this module only dispatches to them (by name) and turns
the user-facing errors into one line and an exit code. Nothing imports it but ``python -m pipeline``
and the ``pipeline`` console script.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.config import ParamsError, load_params
from pipeline.data.errors import PreparedDataError
from pipeline.download.errors import DownloadError
from pipeline.io import InputError, Preempted
from pipeline.stages.job import UndeclaredParamError
from pipeline.stages.registry import STAGES, STAGES_BY_NAME

log = logging.getLogger("pipeline")
PREEMPTED_EXIT = 75   # EX_TEMPFAIL


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline validate", description="Validate params.yaml.")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--write", metavar="MARKER", help="on success, write this marker file (constant content)")
    p.add_argument("--deep", action="store_true",
                   help="also check the models against the data (needs torch and timm: seconds; tools/preflight.py)")
    p.add_argument("--rendered", action="store_true",
                   help="also check that dvc.yaml and params.defaults.yaml are current (DVC's check_params stage)")
    args = p.parse_args(argv)
    cfg = load_params(args.params)
    if args.rendered:
        from pipeline.tools.dvc_render import stale

        if reason := stale(cfg, args.params):
            raise ParamsError(reason)
    if args.deep:
        from pipeline.tools.preflight import check

        check(cfg, args.params)
    if args.write:
        from pipeline.io import write_text

        write_text(args.write, f"{args.params} is valid (pipeline/config/params.schema.yaml)\n")
    print(f"{args.params}: OK")
    return 0


def _schema(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline schema",
                                description="Print the params.yaml JSON schema, completed from the registries.")
    p.parse_args(argv)
    from pipeline.config.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _export_dvc(argv: list[str]) -> int:
    from pipeline.tools.dvc_render import main as render_main

    return render_main(argv)


def _exps(argv: list[str]) -> int:
    from pipeline.tools.dvc_exps import main as exps_main

    return exps_main(argv)


def _exp_run(argv: list[str]) -> int:
    from pipeline.tools.dvc_exps import run_main

    return run_main(argv)


def _fetch(argv: list[str]) -> int:
    from pipeline.tools.fetch import main as fetch_main

    return fetch_main(argv)


def _dvc_commit(argv: list[str]) -> int:
    from pipeline.tools.dvc_commit import main as commit_main

    return commit_main(argv)


def _verify_data(argv: list[str]) -> int:
    from pipeline.tools.verify_data import main as verify_main

    return verify_main(argv)


def _wilds_predictions(argv: list[str]) -> int:
    from pipeline.evaluation.submission import main as submission_main

    return submission_main(argv)


TOOLS = {"validate": _validate, "schema": _schema, "export-dvc": _export_dvc, "dvc-commit": _dvc_commit,
         "exps": _exps, "exp-run": _exp_run, "fetch": _fetch, "verify-data": _verify_data,
         "wilds-predictions": _wilds_predictions}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m pipeline <command> [options]\n\nstages:")
        for st in STAGES:
            print(f"  {st.name:14s} {st.doc}")
        print("tools:\n  validate       check params.yaml\n  schema         print the params.yaml schema\n"
              "  export-dvc     render dvc.yaml from the registry\n"
              "  dvc-commit     record Snakemake's outputs in DVC, keeping their timestamps\n"
              "  exps           DVC experiments as one params-versus-metrics table\n"
              "  exp-run        dvc exp run -S for values that name runs (re-renders dvc.yaml first)\n"
              "  fetch          download every dataset and hub checkpoint a config needs (run where there is network)\n"
              "  verify-data    check prepared datasets against their index: sizes, counts, labels, SHA-256\n"
              "  wilds-predictions  WILDS-style prediction files from a run's predictions.npz")
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
    except (ParamsError, UndeclaredParamError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DownloadError as e:
        # Not in place and not fetched: one line naming the dataset, the file and what to do
        # (stderr is the job's log too).
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:
        # A checkpoint was saved: exit "temporary failure" so that Snakemake's retry or Slurm's requeue resumes it.
        log.warning("%s", e)
        return PREEMPTED_EXIT
    except (FileNotFoundError, FloatingPointError, InputError, PreparedDataError) as e:
        # Missing, outdated or altered data, missing weights, broken checkpoints, non-finite losses: one clear
        # line, no traceback.
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
