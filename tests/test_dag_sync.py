"""Snakemake and DVC are two views of one stage registry: same jobs, same edges."""
import os
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, run_cli
from dag import dvc_dag, snakemake_dag

from pipeline.config import load_params
from pipeline.config.defaults import DEFAULTS_FILE
from pipeline.stages.registry import STAGES, code_digest, source_files
from pipeline.tools.dvc_render import CHECK_MARKER, CHECK_STAGE, render, render_defaults

BIN = Path(PYTHON).parent


def test_committed_dvc_yaml_and_defaults_are_fresh_renders():
    fresh = render(load_params(REPO / "params.yaml"))
    assert (REPO / "dvc.yaml").read_text() == fresh, "dvc.yaml is stale: run `python -m pipeline export-dvc`"
    assert (REPO / DEFAULTS_FILE).read_text() == render_defaults(), \
        f"{DEFAULTS_FILE} is stale: run `python -m pipeline export-dvc`"


def test_a_grid_is_in_the_paths_not_in_the_tracked_params():
    """Adding a grid value adds runs; the existing runs' tracked params (and so their results) stay valid."""
    cfg = load_params(REPO / "params.yaml")
    finetune = next(st for st in STAGES if st.name == "finetune")
    before = {finetune.job_id(wc): finetune.param_values(cfg, wc) for wc in finetune.jobs(cfg)}
    cfg["methods"]["spd"]["grid"]["spd_lambda"].append(0.1)
    after = {finetune.job_id(wc): finetune.param_values(cfg, wc) for wc in finetune.jobs(cfg)}
    assert set(before) < set(after) and len(after) - len(before) == len(cfg["experiment"]["seeds"])
    assert all(after[j] == v for j, v in before.items())
    assert all("grid" not in k for v in after.values() for k in v)


def test_every_stage_depends_on_its_own_code():
    for st in STAGES:
        files = st.code_files()
        assert files[0] == st.module.replace(".", "/") + ".py"
        assert all((REPO / f).is_file() for f in files)
    finetune = source_files("pipeline.stages.finetune")
    assert "pipeline/training/loop.py" in finetune
    # the packages Python runs on the way are code too; the CLI, the job contract and the registries are not
    assert {"pipeline/training/__init__.py", "pipeline/methods/__init__.py"} <= set(finetune)
    assert not {"pipeline/cli.py", "pipeline/stages/job.py", "pipeline/stages/registry.py",
                "pipeline/methods/registry.py", "pipeline/config/settings.py", "pipeline/__init__.py"} & set(finetune)


def test_a_dataset_depends_on_its_own_source_only():
    """Editing the CIFAR reader must not re-prepare (and re-train on) the digits data."""
    cfg = load_params(REPO / "params.yaml")
    cfg["datasets"]["c10"] = {"source": "cifar10"}
    prepare = next(st for st in STAGES if st.name == "prepare_data")
    digits, cifar = prepare.code_files(cfg, {"dataset": "digits"}), prepare.code_files(cfg, {"dataset": "c10"})
    assert "pipeline/data/digits.py" in digits and "pipeline/data/sources/cifar.py" not in digits
    assert "pipeline/data/sources/cifar.py" in cifar and "pipeline/data/digits.py" not in cifar
    assert code_digest(prepare, cfg, {"dataset": "digits"}) != code_digest(prepare, cfg, {"dataset": "c10"})


@pytest.fixture(scope="module")
def graphs():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_PAGER": "cat"}
    snake = run_cli(str(BIN / "snakemake"), "--forceall", "--dag", "--quiet", "all", cwd=REPO, env=env).stdout
    dvc = run_cli(str(BIN / "dvc"), "dag", "--dot", cwd=REPO, env=env).stdout
    return snakemake_dag(snake), dvc_dag(dvc, skip=frozenset({CHECK_STAGE})), dvc_dag(dvc)


def test_same_jobs_and_edges(graphs):
    (s_nodes, s_edges), (d_nodes, d_edges), _ = graphs
    cfg = load_params(REPO / "params.yaml")
    expected = {st.job_id(wc) for st in STAGES for wc in st.jobs(cfg)}
    assert s_nodes == expected
    assert d_nodes == expected
    assert s_edges == d_edges
    assert ("linear_probe--digits--lite0", "finetune--digits--lite0--lpft--epochs2_lr0p0001--seed0") in s_edges
    assert not any(b.startswith("finetune") and "ft_adamw" in b and a.startswith("linear_probe") for a, b in s_edges)
    # every grid point of a soup's methods feeds the soup of its seed, and only that one
    spd = [b for b in expected if b.startswith("finetune--digits--lite0--spd--") and b.endswith("seed1")]
    assert len(spd) == len(cfg["methods"]["spd"].get("grid", {}).get("spd_lambda", [0]))
    for run in spd:
        feeds = {b for a, b in s_edges if a == run.replace("finetune", "evaluate", 1)}
        assert "soup--digits--lite0--seed1" in feeds and "soup--digits--lite0--seed0" not in feeds


def test_dvc_validates_params_before_every_stage(graphs):
    _, _, (nodes, edges) = graphs
    roots = {b for a, b in edges if a == CHECK_STAGE}
    assert roots and all(r.startswith(("download", "prepare_data", "backbone", "lpft_theory")) for r in roots)
    # every other stage is downstream of a root
    downstream = set(roots)
    changed = True
    while changed:
        new = {b for a, b in edges if a in downstream} - downstream
        downstream |= new
        changed = bool(new)
    assert downstream == nodes - {CHECK_STAGE}
    assert CHECK_MARKER in (REPO / "dvc.yaml").read_text()


def test_snakemake_lint_is_clean_and_every_rule_names_its_environment():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    res = run_cli(str(BIN / "snakemake"), "--lint", cwd=REPO, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr
    assert (REPO / "envs/pipeline.yaml").is_file() and 'conda:\n            "envs/pipeline.yaml"' in \
        (REPO / "Snakefile").read_text()


def test_every_table_template_is_rendered_by_a_stage():
    cfg = load_params(REPO / "params.yaml")
    rendered = {t for st in STAGES for wc in st.jobs(cfg)
                for key, t in st.inputs(cfg, wc).items() if key in ("template", "templates")
                for t in ([t] if isinstance(t, str) else t)}
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "paper/templates").glob("*.j2")}
    assert rendered == on_disk and len(on_disk) >= 2
