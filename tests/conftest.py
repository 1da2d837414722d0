"""Test-wide settings: offline hub, no PyPI version checks, CPU torch shims."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OUTDATED_IGNORE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`make test`: one worker per core) each worker computes on one thread: two workers of
    # two spin-waiting threads each would crawl on CI's 2 cores. PIPELINE_THREADS reaches the stages the tests
    # run, in-process or as subprocesses (pipeline.stages.job.set_threads); a scheduler's own grant (Snakemake's
    # `threads`) still overrides it for the jobs it starts.
    os.environ["PIPELINE_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipeline import compat

compat.apply()

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PIPELINE_THREADS") or torch.get_num_threads()))

import resource  # noqa: E402
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
    cfg["datasets"]["digits"]["storage_size"] = 32
    cfg["datasets"]["digits"]["build"] = {"train_per_class": 6, "val_per_class": 3,
                                          "test_per_class": 3, "ood_per_class": 4, "seed": 0}
    cfg["models"] = {"tiny": {"timm_name": model, "weights": weights, "input_size": 32, "crop_pct": 1.0}}
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



# PYTEST_CPU_TIMES=N: after the run, the N test files and tests that took the most CPU seconds (user+sys of the
# test process and the children it waited for: subprocesses, Snakemake jobs; not daemons such as Slurm's), with
# their wall seconds. A module or session fixture counts towards the test that set it up. CPU seconds hardly move
# with the machine's load, unlike wall seconds, so they compare runs on a shared machine. Works under xdist (each
# worker measures its tests; the reports carry the figures to the controller).
_CPU_TIMES: dict[str, list[float]] = {}


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.cpu_mark = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    now = _cpu_seconds()
    report.cpu_seconds, item.cpu_mark = now - getattr(item, "cpu_mark", now), now   # this phase's


def pytest_runtest_logreport(report):
    if os.environ.get("PYTEST_CPU_TIMES") and hasattr(report, "cpu_seconds"):
        acc = _CPU_TIMES.setdefault(report.nodeid, [0.0, 0.0])
        acc[0], acc[1] = acc[0] + report.cpu_seconds, acc[1] + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _CPU_TIMES:
        return
    n = int(os.environ["PYTEST_CPU_TIMES"])
    files: dict[str, list[float]] = {}
    for nodeid, (cpu, wall) in _CPU_TIMES.items():
        acc = files.setdefault(nodeid.split("::")[0], [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + cpu, acc[1] + wall, acc[2] + 1
    cpu, wall = (sum(v[i] for v in _CPU_TIMES.values()) for i in (0, 1))
    tr = terminalreporter
    tr.section(f"CPU seconds (user+sys, children included) of {len(_CPU_TIMES)} tests: {cpu:.0f} (wall {wall:.0f})")
    tr.write_line(f"{'cpu s':>8} {'wall s':>8} {'tests':>5}  file")
    for path, (cpu, wall, count) in sorted(files.items(), key=lambda x: -x[1][0])[:n]:
        tr.write_line(f"{cpu:8.1f} {wall:8.1f} {count:5d}  {path}")
    tr.write_line(f"{'cpu s':>8} {'wall s':>8}  test")
    for nodeid, (cpu, wall) in sorted(_CPU_TIMES.items(), key=lambda x: -x[1][0])[:n]:
        tr.write_line(f"{cpu:8.1f} {wall:8.1f}  {nodeid}")


# Scheduling under pytest-xdist `--dist loadgroup` (see the Makefile's `test`). A module whose tests share a
# module-scoped fixture (the e2e project, the Slurm cluster, prepared data) runs on one worker, in its order, so
# the fixture is set up once; every other test is scheduled on its own. xdist hands out work in collection order,
# so the longest work goes first: a long test started last would leave the other worker idle at the end.
def _shares_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(d.scope == "module" for name in info.names_closure
                                    for d in info.name2fixturedefs.get(name, ()))


def _weight(item: pytest.Item) -> int:
    """Larger runs earlier: the slow tests (the real-size ViT-L/14 first), then everything else."""
    if item.get_closest_marker("slow") is None:
        return 0
    return 2 if "large" in item.nodeid else 1


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which turns the marks into groups
def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None and _shares_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda it: -_weight(it))   # stable: each module keeps its order
