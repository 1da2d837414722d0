"""``python -m pipeline exps``: DVC experiments as one readable params-versus-metrics table; ``exp-run``: one more.

``dvc exp show`` has a column for every param, every dependency's hash and every metric, and a
row of ``!`` for a commit without results. This reads its JSON (``dvc exp show --json``, DVC's
machine-readable form) and prints one row per experiment that has results, with the params
that differ between those experiments and the report's metrics (``results/report/metrics.json``:
ID and OOD accuracy of each table row) that differ too, in percent. ``--all`` keeps every
metric column; ``--csv`` prints CSV instead of Markdown.

``python -m pipeline exp-run -S key=value [-n NAME]`` is ``dvc exp run -S`` for values that name runs:
a run's directory spells its values (:func:`pipeline.config.settings.run_name`), so a new learning rate
is a new run, a new stage of ``dvc.yaml``, which DVC reads before ``-S`` applies. This applies the values
as ``-S`` does (DVC's own override parser, comments kept), validates them, renders ``dvc.yaml`` for them,
then runs ``dvc exp run``, which records the changed files with the experiment.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

METRICS_FILE = "results/report/metrics.json"
PARAMS_FILE = "params.yaml"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat(value, name + ".")
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def _short(rev: str) -> str:
    return rev[:7] if len(rev) == 40 else rev   # a commit hash, or "workspace"


def _revisions(entries: list[dict]) -> Iterator[tuple[str, dict]]:
    """(name, data) of the workspace, each baseline commit, and every experiment derived from it."""
    for entry in entries:
        yield entry.get("name") or _short(entry["rev"]), entry.get("data") or {}
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield rev.get("name") or _short(rev["rev"]), rev.get("data") or {}


def collect(shown: list[dict], params_file: str = PARAMS_FILE, metrics_file: str = METRICS_FILE) -> pd.DataFrame:
    """One row per revision with results: ``experiment``, ``param:<key>`` and ``metric:<key>`` columns."""
    rows = []
    for name, data in _revisions(shown):
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data")
        if not metrics:
            continue   # no results at this revision (a commit without dvc.lock, a failed run)
        params = ((data.get("params") or {}).get(params_file) or {}).get("data") or {}
        rows.append({"experiment": name, **{f"param:{k}": v for k, v in _flat(params).items()},
                     **{f"metric:{k}": v for k, v in _flat(metrics).items()}})
    df = pd.DataFrame(rows)
    if len(df) > 1 and df["experiment"].iloc[0] == "workspace":
        # After `dvc exp run` the workspace holds the experiment's results: one row is enough.
        values = df.drop(columns="experiment").astype(str)
        if (values.iloc[1:] == values.iloc[0]).all(axis=1).any():
            df = df.iloc[1:].reset_index(drop=True)
    return df


def table(df: pd.DataFrame, all_metrics: bool = False) -> pd.DataFrame:
    """Params that vary, then metrics (in percent) that vary (or all of them), one row per experiment."""
    if df.empty:
        return df

    def varies(col: str) -> bool:
        return len(df) == 1 or df[col].astype(str).nunique(dropna=False) > 1

    params = [c for c in df.columns if c.startswith("param:") and varies(c)]
    metrics = [c for c in df.columns if c.startswith("metric:") and (all_metrics or varies(c))]
    out = df[["experiment", *params, *metrics]].copy()
    out[metrics] = out[metrics].apply(pd.to_numeric, errors="coerce").mul(100).round(1)
    return out.rename(columns=lambda c: c.split(":", 1)[1] if ":" in c else c)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline exps", description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="keep metric columns that are the same everywhere")
    p.add_argument("--csv", action="store_true", help="CSV instead of Markdown")
    p.add_argument("--dvc", default="dvc", help="the dvc executable")
    args = p.parse_args(argv)
    res = subprocess.run([args.dvc, "exp", "show", "--json"], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"error: dvc exp show failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    out = table(collect(json.loads(res.stdout)), args.all)
    if out.empty:
        print("no experiment has results yet: run `dvc exp run` (or `make demo`, then `dvc exp save`)")
        return 0
    sys.stdout.write(out.to_csv(index=False) if args.csv else out.to_markdown(index=False) + "\n")
    return 0


def run_main(argv: list[str] | None = None) -> int:
    """``python -m pipeline exp-run``: set params, re-render ``dvc.yaml``, ``dvc exp run``."""
    p = argparse.ArgumentParser(prog="python -m pipeline exp-run",
                                description="dvc exp run -S for values that name runs: sets them, re-renders dvc.yaml "
                                            "for them, then runs the experiment")
    p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a params.yaml value, as dvc exp run -S takes it (repeatable)")
    p.add_argument("-n", "--name", help="the experiment's name")
    p.add_argument("--dvc", default="dvc", help="the dvc executable")
    args, rest = p.parse_known_args(argv)   # anything else goes to dvc exp run (--dry, -f, ...)
    from dvc.utils.hydra import apply_overrides

    from pipeline.config import load_params
    from pipeline.tools.dvc_render import main as render

    before = Path(PARAMS_FILE).read_text()
    apply_overrides(PARAMS_FILE, args.overrides)
    try:
        load_params(PARAMS_FILE)   # a bad value: params.yaml as it was, one line naming the key
    except Exception:
        Path(PARAMS_FILE).write_text(before)
        raise
    render([])
    cmd = [args.dvc, "exp", "run", *(["--name", args.name] if args.name else []), *rest]
    return subprocess.run(cmd).returncode
