"""`python -m pipeline dvc-commit` keeps Snakemake's timestamps when DVC relinks a cached output."""
import os
import time
from pathlib import Path

from conftest import PYTHON, run_cli

from pipeline.tools.dvc_commit import commit_keeping_mtimes

DVC = str(Path(PYTHON).parent / "dvc")


def dvc_project(root: Path) -> Path:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run_cli("git", "init", "-q", cwd=root, env=env)
    run_cli(DVC, "init", "-q", cwd=root, env=env)
    run_cli(DVC, "config", "cache.type", "hardlink", cwd=root, env=env)
    (root / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo same > out.txt\n    outs: [out.txt]\n")
    out = root / "out.txt"
    out.write_text("same\n")
    run_cli(DVC, "commit", "-f", "-q", cwd=root, env=env)
    return out


def rewrite_later(out: Path) -> int:
    """A job re-runs and writes the same bytes, atomically (a new file), a moment later."""
    time.sleep(0.05)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("same\n")
    os.replace(tmp, out)
    return out.stat().st_mtime_ns


def test_plain_dvc_commit_turns_back_the_clock(tmp_path):
    out = dvc_project(tmp_path)
    fresh = rewrite_later(out)
    run_cli(DVC, "commit", "-f", "-q", cwd=tmp_path)
    assert out.stat().st_mtime_ns < fresh     # relinked to the older cached copy: why the tool exists


def test_dvc_commit_tool_restores_the_timestamp(tmp_path):
    out = dvc_project(tmp_path)
    fresh = rewrite_later(out)
    assert commit_keeping_mtimes([out], dvc=DVC, cwd=tmp_path) == 1
    assert out.stat().st_mtime_ns == fresh and out.read_text() == "same\n"
    assert "up to date" in run_cli(DVC, "status", cwd=tmp_path).stdout
