"""A job killed while it writes (SIGKILL: no handler runs) leaves temporary debris; running the job again removes it."""
import signal
import subprocess

import pytest
from conftest import PYTHON

from pipeline.io import atomic_path, remove_debris

# Runs a stage's command, but SIGKILLs itself at the moment its output would be renamed into place: the
# temporary output is then complete on disk, as when the out-of-memory killer or a lost node stops a job.
KILLED_AT_RENAME = """
import os, signal, sys
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_stage(workdir, *args: str, killed: bool = False) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-c", KILLED_AT_RENAME, *args] if killed else [PYTHON, "-m", "pipeline", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)


def debris(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("args, output", [
    (("prepare_data", "--dataset", "digits"), "data/prepared/digits"),     # a directory of shards
    (("backbone", "--model", "tiny"), "data/weights/tiny.safetensors"),   # a file
])
def test_a_killed_jobs_debris_is_gone_after_the_rerun(tiny_workdir, args, output):
    out = tiny_workdir / output
    other = out.parent / ".tmp-cifar10-abcd1234"   # another job's write in progress: not ours to remove
    killed = run_stage(tiny_workdir, *args, killed=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = debris(out.parent)
    assert len(left) == 1 and left[0].startswith(f".tmp-{out.name}-") and not out.exists()
    other.mkdir()
    rerun = run_stage(tiny_workdir, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert out.exists() and debris(out.parent) == [other.name]
    assert f"removed 1 temporary file(s) a killed write of {output} left: {left[0]}" in rerun.stderr


def test_only_the_outputs_own_temporary_names_are_removed(tmp_path):
    target = tmp_path / "figure.pdf"
    mine = [tmp_path / ".tmp-figure.pdf-k2_9zq0a", tmp_path / ".tmp-figure.pdf-0123abcd"]
    theirs = [tmp_path / ".tmp-figure.pdf-x-abcd1234", tmp_path / ".tmp-figure.pdf.png-abcd1234",
              tmp_path / ".tmp-figure.pdf-abc", tmp_path / "figure.pdf-abcd1234"]
    for p in mine + theirs:
        p.write_text("partial")
    (mine[0].parent / ".tmp-figure.pdf-dir12345").mkdir()
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *(p.name for p in theirs)])
    assert remove_debris(tmp_path / "missing/x") == []
