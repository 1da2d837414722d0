"""``python -m pipeline dvc-commit``: record Snakemake's outputs in DVC without disturbing Snakemake.

``dvc commit`` in hardlink mode replaces an output whose content is already in
the cache (a job re-ran and wrote the same bytes as an earlier run) by a link to
the cached copy, which carries the earlier run's mtime. An output can then look
older than its inputs, and Snakemake would re-run its job for nothing. This tool
notes the mtime of every output of the registry (and of every file inside
directory outputs), runs ``dvc commit -f``, and puts back any mtime that changed.
Run it after a complete Snakemake run (``make demo`` does).
"""
from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from pipeline.config import load_params
from pipeline.stages.registry import STAGES


def output_files(cfg: dict, results_only: bool = False) -> list[Path]:
    """Every existing output file of every job, directory outputs expanded.

    ``results_only``: leave out measurements and what is derived from them (``Stage.measured``,
    ``Stage.volatile``), i.e. keep the outputs that are the same bytes for the same inputs.
    """
    files: list[Path] = []
    for st in STAGES:
        for wc in st.jobs(cfg):
            skip = st.measured | st.volatile if results_only else frozenset()
            for path in (Path(p) for name, p in st.output_paths(wc).items() if name not in skip):
                if path.is_dir():
                    files += [p for p in path.rglob("*") if p.is_file()]
                elif path.is_file():
                    files.append(path)
    return files


def commit_keeping_mtimes(files: list[Path], dvc: str = "dvc", cwd: Path | None = None) -> int:
    """``dvc commit -f -q``, then restore the mtimes it changed in ``files``; returns how many."""
    before = {p: p.stat().st_mtime_ns for p in files}
    subprocess.run([dvc, "commit", "-f", "-q"], check=True, cwd=cwd)
    restored = 0
    for path, mtime in before.items():
        if path.exists() and path.stat().st_mtime_ns != mtime:
            os.utime(path, ns=(mtime, mtime))
            restored += 1
    return restored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline dvc-commit", description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    restored = commit_keeping_mtimes(output_files(load_params(args.params)))
    print(f"dvc commit done; {restored} timestamps restored for Snakemake")
    return 0
