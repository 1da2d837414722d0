"""Test-wide settings: offline hub, no PyPI version checks, CPU torch shims."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OUTDATED_IGNORE", "1")

from pipeline import compat

compat.apply()

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def tiny_params(model: str = "test_efficientnet", weights: str = "none") -> dict:
    """A params.yaml for tests: the real digits task, shrunk, and a tiny model."""
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["experiment"] = {"datasets": ["digits"], "models": ["tiny"], "methods": ["ft_adamw", "lpft"], "seeds": [0, 1]}
    cfg["datasets"]["digits"]["build"] = {"image_size": 32, "train_per_class": 6, "val_per_class": 3,
                                          "test_per_class": 3, "ood_per_class": 4, "seed": 0}
    cfg["models"] = {"tiny": {"timm_name": model, "weights": weights}}
    cfg["linear_probe"].update(num_C=4, max_iter=30)
    cfg["finetune"].update(epochs=1, batch_size=16)
    cfg["wise_ft"] = {"alphas": [0.0, 0.5, 1.0], "methods": ["ft_adamw", "lpft"]}
    cfg["soups"] = {"methods": ["ft_adamw"]}
    cfg["analysis"] = {"lpft_theory": {"eps": [0.0, 0.2], "seeds": 2}, "grad_norms": {"batch_size": 16}}
    return cfg


@pytest.fixture
def tiny_workdir(tmp_path, monkeypatch):
    """A working directory holding a tiny params.yaml and the paper sources; cwd is set to it."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    shutil.copytree(REPO / "paper", tmp_path / "paper",
                    ignore=shutil.ignore_patterns("tables", "figures", "main.pdf", "build"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


PYTHON = sys.executable


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server (tests/http_server.py), stopped after the test; no proxy for 127.0.0.1."""
    from http_server import LoopbackServer

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with LoopbackServer() as srv:
        yield srv
