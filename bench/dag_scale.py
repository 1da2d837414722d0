"""How fast the runners plan: a dry run of the full paper sweep, and no-op re-runs of the demo.

Measured, each ``--repeats`` times (best and median wall time, whole process):

* ``snakemake -n`` on each paper config (``configs/*.yaml``, thousands of jobs; no
  data needed: a dry run only builds the DAG). Target: at most 10 s.
* ``snakemake`` and ``dvc repro`` on the embedded demo after ``make demo`` (nothing
  to do; they must only find that out). Target: at most 5 s each. Skipped, with
  a note, when the demo has not been run in this checkout.
* ``--grid N ...``: ``snakemake -n`` on a one-method sweep of N learning rates (the demo's data and
  model, one seed, WiSE-FT and soups on), with its wall time and peak memory, once each: planning
  must grow linearly with the runs. Targets: 10k runs in at most 60 s, 100k in at most 10 minutes.

    python bench/dag_scale.py [--repeats 3] [--json out.json]
    python bench/dag_scale.py --configs --grid 1000 10000 100000
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = {"dry-run": 10.0, "no-op": 5.0}
GRID_TARGETS = {10_000: 60.0, 100_000: 600.0}   # seconds per grid size; others: linear in between


def grid_params(n: int, out: Path) -> Path:
    """params.yaml with one method sweeping ``n`` learning rates on the demo's data and model."""
    import yaml

    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["experiment"] = {"datasets": ["digits"], "models": ["lite0"], "methods": ["sweep"], "seeds": [0]}
    cfg["methods"] = {"sweep": {"init": "random", "optimizer": "sgd",
                                "grid": {"lr": [round(1e-6 * (i + 1), 12) for i in range(n)]}}}
    cfg["wise_ft"] = {"alphas": [0.0, 0.5, 1.0], "methods": ["sweep"]}
    cfg["soups"] = {"methods": ["sweep"]}
    cfg["report"] = {k: v for k, v in cfg["report"].items() if k != "baseline"}
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def peak_rss_run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and output of ``cmd``, measured in a child of a fresh process."""
    probe = ("import resource, subprocess, sys, time, json\n"
             "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
             " r.returncode, r.stdout[-3000:] + r.stderr[-3000:]]))")
    res = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    seconds, mib, code, out = json.loads(res.stdout)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{out}")
    return seconds, mib, out


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return seconds, res.stdout + res.stderr


def measure(name: str, kind: str, cmd: list[str], env: dict, repeats: int, check) -> dict:
    times, out = [], ""
    for _ in range(repeats):
        seconds, out = timed(cmd, env)
        times.append(seconds)
    row = {"what": name, "kind": kind, "best_s": min(times), "median_s": statistics.median(times),
           "target_s": TARGETS[kind], "command": " ".join(cmd), **check(out)}
    row["ok"] = row["median_s"] <= row["target_s"]
    return row


def dry_run_jobs(out: str) -> dict:
    m = re.search(r"^total\s+(\d+)\s*$", out, re.M)
    return {"jobs": int(m.group(1)) if m else 0}


def nothing_to_do(out: str) -> dict:
    idle = "Nothing to be done" in out or "up to date" in out
    if not idle:
        raise SystemExit(f"expected a no-op run, but it had work to do:\n{out[-2000:]}")
    return {"jobs": 0}


def demo_is_complete(env: dict) -> bool:
    if not (REPO / "paper/main.pdf").is_file() or not (REPO / "dvc.lock").is_file():
        return False
    _, out = timed([str(BIN / "snakemake"), "-n", "--quiet"], env)
    return "Nothing to be done" in out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="*",
                   default=sorted(str(c.relative_to(REPO)) for c in REPO.glob("configs/*.yaml")))
    p.add_argument("--grid", nargs="*", type=int, default=[], help="runs of the synthetic sweeps to plan")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    if args.grid:
        import tempfile

        grid_rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.grid:
                params = grid_params(n, Path(tmp) / f"grid{n}.yaml")
                seconds, mib, out = peak_rss_run([str(BIN / "snakemake"), "-n", "--config", f"params={params}"], env)
                target = GRID_TARGETS.get(n, 60.0 * n / 10_000)
                grid_rows.append({"what": f"snakemake -n, {n} runs", "kind": "grid", "runs": n,
                                  **dry_run_jobs(out), "seconds": seconds, "peak_mib": mib, "target_s": target,
                                  "ok": seconds <= target})
        print(f"{'what':32s} {'jobs':>7s} {'seconds':>8s} {'s/1k runs':>9s} {'peak MiB':>9s} {'target':>7s}")
        for r in grid_rows:
            print(f"{r['what']:32s} {r['jobs']:7d} {r['seconds']:8.1f} {1000 * r['seconds'] / r['runs']:9.2f} "
                  f"{r['peak_mib']:9.0f} {'<= ' + format(r['target_s'], 'g'):>7s}  {'ok' if r['ok'] else 'OVER'}")
        if args.json and not args.configs:
            Path(args.json).write_text(json.dumps(grid_rows, indent=2) + "\n")
        if not args.configs:
            return 0

    rows = [measure(f"snakemake -n, {cfg}", "dry-run", [str(BIN / "snakemake"), "-n", "--config", f"params={cfg}"],
                    env, args.repeats, dry_run_jobs) for cfg in args.configs]
    if demo_is_complete(env):
        rows.append(measure("snakemake (demo, no-op)", "no-op", [str(BIN / "snakemake"), "--cores", "2"],
                            env, args.repeats, nothing_to_do))
        rows.append(measure("dvc repro (demo, no-op)", "no-op", [str(BIN / "dvc"), "repro"],
                            env, args.repeats, nothing_to_do))
    else:
        print("note: no completed demo here (paper/main.pdf, dvc.lock): run `make demo` to time the no-op re-runs\n")

    print(f"{'what':44s} {'jobs':>6s} {'best s':>7s} {'median s':>9s} {'target':>7s}")
    for r in rows:
        print(f"{r['what']:44s} {r['jobs']:6d} {r['best_s']:7.2f} {r['median_s']:9.2f} "
              f"{'<= ' + format(r['target_s'], 'g'):>7s}  {'ok' if r['ok'] else 'OVER'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
