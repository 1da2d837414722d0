"""The whole DAG on a tiny config, through the real Snakemake and DVC.

Checks: a full run ends in paper/main.pdf; afterwards neither runner has
anything to do; changing one method's learning rate re-runs exactly that
method's jobs and their downstream, in Snakemake and in `dvc repro` alike; a
malformed params.yaml stops both with one line and runs nothing.
"""
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PYTHON, REPO, run_cli, tiny_params

BIN = Path(PYTHON).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed (make setup)")]


def copy_project(dst: Path, cfg: dict) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "tables", "figures", "main.pdf", "build")
    for name in ("pipeline", "paper"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("Snakefile", ".dvcignore", ".gitignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dst / ".dvc" / "config")
    (dst / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def snakemake_jobs(out: str) -> Counter:
    """Job counts per rule from a dry run's 'Job stats' table."""
    table = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    counts = Counter()
    for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M):
        if rule not in ("all", "total"):
            counts[rule] = int(n)
    return counts


def dvc_ran(out: str) -> Counter:
    return Counter(name.split("--")[0] for name in re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    cfg = tiny_params(model="tf_efficientnet_lite0", weights="packaged:efficientnet_lite0")
    copy_project(root, cfg)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
    run_cli("git", "init", "-q", cwd=root)
    run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=root, env=env)
    return root, env, cfg


def test_full_run_then_nothing_to_do_then_targeted_reruns(project):
    root, env, cfg = project
    snake = [str(BIN / "snakemake"), "--cores", "2"]
    run_cli(*snake, cwd=root, env=env)
    assert (root / "paper/main.pdf").stat().st_size > 10_000
    results = pd.read_csv(root / "results/report/results.csv")
    assert set(results["method"]) == {"lp", "ft_adamw", "lpft", "uniform_soup", "greedy_soup"}
    assert set(results["seed"]) == {0, 1}
    assert results["config_hash"].str.len().eq(12).all()
    assert (root / "logs/finetune/digits/tiny/lpft/default/0.log").is_file()
    assert (root / "benchmarks/finetune/digits/tiny/lpft/default/0.tsv").is_file()

    # nothing to do, for either runner
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    run_cli("make", "-f", str(REPO / "Makefile"), "dvc-commit", f"VENV={BIN.parent}", cwd=root, env=env)
    assert "up to date" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    assert dvc_ran(run_cli(str(BIN / "dvc"), "repro", cwd=root, env=env).stdout) == Counter()

    # one method's learning rate changes: only its jobs and their downstream re-run
    cfg["methods"]["ft_adamw"]["lr"] = cfg["methods"]["ft_adamw"]["lr"] * 2
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    expected = Counter({"finetune": 2, "evaluate": 2, "wise_ft": 2, "soup": 2, "report": 1, "paper": 1})
    assert snakemake_jobs(run_cli(*snake, "-n", cwd=root, env=env).stdout) == expected
    ran = dvc_ran(run_cli("make", "-f", str(REPO / "Makefile"), "repro", f"VENV={BIN.parent}", cwd=root,
                          env=env).stdout)
    assert ran == expected + Counter({"check_params": 1})
    assert "up to date" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    # `make repro` = dvc repro + snakemake --touch: Snakemake accepts DVC's outputs
    after = run_cli(*snake, "-n", cwd=root, env=env).stdout
    assert "Nothing to be done" in after, after[-2000:]

    # editing a stage's code re-runs that stage and its downstream (touching it without an edit does not)
    soup_code = root / "pipeline/ensembling/soup.py"
    os.utime(soup_code)
    assert "Nothing to be done" in run_cli(*snake, "-n", cwd=root, env=env).stdout
    soup_code.write_text(soup_code.read_text() + "\n# an edit\n")
    expected = Counter({"soup": 2, "report": 1, "paper": 1})
    assert snakemake_jobs(run_cli(*snake, "-n", cwd=root, env=env).stdout) == expected
    assert "soup--digits--tiny--seed0" in run_cli(str(BIN / "dvc"), "status", cwd=root, env=env).stdout


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["experiment"]["methods"].append("nope"), "experiment.methods[2]"),
    (lambda c: c["methods"]["lpft"].__setitem__("lr", -1.0), "methods.lpft.lr"),
    (lambda c: c["finetune"].__setitem__("epohcs", 2), "finetune.epohcs"),
])
def test_malformed_params_run_nothing(tmp_path, edit, key):
    cfg = tiny_params()
    copy_project(tmp_path, cfg)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    run_cli("git", "init", "-q", cwd=tmp_path)
    run_cli(PYTHON, "-m", "pipeline", "export-dvc", cwd=tmp_path, env=env)
    edit(cfg)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    res = run_cli(str(BIN / "snakemake"), "--cores", "1", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"params.yaml: {key}" in errors[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()

    res = run_cli(str(BIN / "dvc"), "repro", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    assert f"params.yaml: {key}" in res.stdout + res.stderr
    assert not (tmp_path / "data").exists()
    assert not any(p.is_file() for p in (tmp_path / "results").rglob("*")) if (tmp_path / "results").exists() else True
