"""`make test`'s scheduling holds: under `--dist loadgroup` a module's tests that share a group run on one worker.

The real-size module runs its ViT-L/14 fine-tunes one at a time only because of it (two side by side need more
than a 24 GB machine), and the end-to-end modules run their tests in order on one project. It broke once
silently (pytest 9.2 with xdist 3.8: every test scheduled alone), so it is checked on a fabricated suite.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = '''
import os, time, pytest
pytestmark = [pytest.mark.xdist_group("heavy")]

@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    time.sleep(0.2)
    open(f"grouped_{i}", "w").write(os.environ["PYTEST_XDIST_WORKER"])
'''
OTHERS = '''
import time, pytest

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    time.sleep(0.2)
'''


@pytest.mark.parametrize("mark", ['"heavy"', 'name="heavy"'])
def test_a_group_runs_on_one_worker(tmp_path: Path, mark: str):
    (tmp_path / "test_grouped.py").write_text(SUITE.replace('"heavy"', mark))
    (tmp_path / "test_free.py").write_text(OTHERS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                          "no:cacheprovider", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]
    grouped = {(tmp_path / f"grouped_{i}").read_text() for i in range(6)}
    assert len(grouped) == 1, f"the group's tests ran on {sorted(grouped)}"
