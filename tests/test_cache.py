"""The cache sees every line a result depends on, and nothing else (pipeline/stages/code.py,
pipeline/config/defaults.py): package ``__init__`` modules are code; a registry default is tracked by
the jobs that resolve it; a new registry entry changes no existing job; a part's code is a dependency
of exactly the runs that use it. The same through the real Snakemake and DVC: test_pipeline_e2e.py.
"""
import copy
import dataclasses

import pytest
import yaml
from conftest import REPO, tiny_params

from pipeline.config import load_params, validate
from pipeline.config.defaults import defaults_tree
from pipeline.data import sources
from pipeline.methods import registry
from pipeline.stages.registry import STAGES, STAGES_BY_NAME, code_digest


def signature(cfg: dict) -> dict[str, tuple]:
    """Everything either runner tracks per job: its code, params, defaults and command."""
    return {st.job_id(wc): (tuple(st.code_files(cfg, wc)), repr(st.param_values(cfg, wc)),
                            repr(st.default_values(cfg, wc)), st.command(wc, cfg=cfg))
            for st in STAGES for wc in st.jobs(cfg)}


@pytest.fixture
def cfg():
    return load_params(REPO / "params.yaml")


def test_package_inits_are_code_of_the_jobs_that_import_them(cfg):
    report = STAGES_BY_NAME["report"].code_files(cfg, {})
    assert "pipeline/reporting/layouts/__init__.py" in report      # DEFAULT_TABLES, build()
    assert "pipeline/reporting/__init__.py" in report
    zs = copy.deepcopy(cfg)
    zs["models"]["clip"] = {"open_clip": "ViT-B-32", "weights": "none"}
    zs["experiment"]["models"] = ["clip"]
    zeroshot = STAGES_BY_NAME["zeroshot"]
    job = {"dataset": "digits", "model": "clip"}
    assert zeroshot.jobs(zs) == [job]
    assert "pipeline/data/prompts/__init__.py" in zeroshot.code_files(zs, job)   # render() of the prompts
    finetune = STAGES_BY_NAME["finetune"]
    for wc in finetune.jobs(cfg):
        assert "pipeline/data/prompts/__init__.py" not in finetune.code_files(cfg, wc)


def test_a_registry_default_is_tracked_by_exactly_the_jobs_that_resolve_it(cfg, monkeypatch):
    cfg = copy.deepcopy(cfg)
    cfg["datasets"]["c10"] = {"source": "cifar10"}                     # takes the default storage size
    cfg["datasets"]["c10_small"] = {"source": "cifar10", "storage_size": 32}
    cfg["experiment"]["datasets"] = ["digits", "c10", "c10_small"]
    cfg = validate(cfg)
    before = signature(cfg)
    spec = sources.SOURCES["cifar10"]                                   # the storage size default edited
    monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(spec, defaults={**spec.defaults,
                                                                                       "storage_size": 384}))
    after = signature(cfg)
    assert {j for j in before if before[j] != after[j]} == {"prepare_data--c10"}

    # a training default: every run that leaves the key unset, and no other job
    tiny = validate(tiny_params())
    before = signature(tiny)
    monkeypatch.setitem(registry.KEYS, "weight_decay", registry.Key(0.05, {"type": "number"}, "wd"))
    changed = {j for j in before if before[j] != signature(tiny)[j]}
    runs = [wc for wc in STAGES_BY_NAME["finetune"].jobs(tiny) if "weight_decay" not in tiny["methods"][wc["method"]]]
    assert changed == {STAGES_BY_NAME["finetune"].job_id(wc) for wc in runs} and changed


def test_adding_registry_entries_changes_no_existing_job(cfg, monkeypatch):
    before = signature(cfg)
    # a new policy with its own key, and a new dataset source
    key = registry.Key(1.0, {"type": "number"}, "a test knob", True)
    entry = registry.Component("policy", "knob", "pipeline.methods.freeze", "knob", "a test policy", ("knob",))
    monkeypatch.setitem(registry.KEYS, "knob", key)
    monkeypatch.setattr(registry, "COMPONENTS", (*registry.COMPONENTS, entry))
    monkeypatch.setattr(registry, "POLICIES", {**registry.POLICIES, "knob": entry})
    monkeypatch.setitem(sources.SOURCES, "mysource", sources.SourceSpec("pipeline.data.sources.cifar",
                                                                         ("root", "storage_size"), "a test source"))
    assert "knob" in defaults_tree()["methods"] and "mysource" in defaults_tree()["sources"]
    assert signature(cfg) == before


def test_a_parts_code_is_a_dependency_of_exactly_the_runs_that_use_it(cfg):
    finetune = STAGES_BY_NAME["finetune"]
    for wc in finetune.jobs(cfg):
        settings = {**cfg["finetune"], **cfg["methods"][wc["method"]]}
        files = finetune.code_files(cfg, wc)
        assert ("pipeline/methods/spd.py" in files) == (settings["optimizer"] == "spd"), wc
        assert ("pipeline/methods/l2sp.py" in files) == (wc["method"] == "l2sp"), wc
        assert ("pipeline/methods/freeze.py" in files) == ("freeze" in settings), wc
        assert ("pipeline/methods/init_lp.py" in files) == (settings["init"] == "lp"), wc
    digests = {finetune.job_id(wc): code_digest(finetune, cfg, wc) for wc in finetune.jobs(cfg)}
    assert len(set(digests.values())) > 3


def test_committed_params_render_the_defaults_each_job_reads():
    rendered = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    finetune = rendered["finetune--digits--lite0--ft_adamw--epochs2_lr0p0003--seed0"]
    defaults = next(p["params.defaults.yaml"] for p in finetune["params"] if isinstance(p, dict))
    assert "methods.weight_decay" in defaults and "methods.momentum" not in defaults   # AdamW reads no momentum
    assert not any(k.startswith("finetune.batch_size") for k in defaults)               # params.yaml sets it
    # the run's name spells epochs where it leaves its default: what the name means depends on the default
    assert "finetune.epochs" in defaults
