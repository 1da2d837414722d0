"""A stage sees only the params it declares: the view refuses anything else, and every stage's main runs within it."""
import copy
import importlib
import shutil

import pytest
import yaml

from pipeline.config import load_params
from pipeline.stages import job as job_module
from pipeline.stages.job import Declared, ParamsView, UndeclaredParamError, resolve_job
from pipeline.stages.registry import STAGES, STAGES_BY_NAME


def view_of(stage: str, cfg: dict, **wc) -> ParamsView:
    return ParamsView(cfg, Declared.of(STAGES_BY_NAME[stage], wc))


def test_view_refuses_undeclared_keys_by_every_route(tiny_workdir):
    cfg = load_params("params.yaml")
    cfg["models"]["tiny"]["model_kwargs"] = {"drop_rate": 0.1}
    v = view_of("backbone", cfg, model="tiny")
    assert v["models"]["tiny"]["model_kwargs"]["drop_rate"] == 0.1
    assert list(v) == ["models"] and list(v["models"]) == ["tiny"]   # undeclared siblings are invisible
    with pytest.raises(UndeclaredParamError, match=r"stage backbone reads params key finetune, which it does not"):
        v["finetune"]
    with pytest.raises(UndeclaredParamError, match="features"):
        v.get("features", {})          # a default does not hide the read
    with pytest.raises(UndeclaredParamError):
        "evaluate" in v                # noqa: B015
    assert "models.tiny.model_kwargs" in v.reads or "models.tiny" in {r.rsplit(".", 1)[0] for r in v.reads}


def test_a_methods_grid_is_outside_its_star_declaration(tiny_workdir):
    cfg = load_params("params.yaml")
    cfg["methods"]["ft_adamw"]["grid"] = {"lr": [1e-3, 1e-4]}
    del cfg["methods"]["ft_adamw"]["lr"]
    v = view_of("finetune", cfg, dataset="digits", model="tiny", method="ft_adamw", hp="epochs1_lr0.001", seed="0")
    assert "grid" not in list(v["methods"]["ft_adamw"])
    with pytest.raises(UndeclaredParamError, match="methods.ft_adamw.grid.lr"):
        v["methods"]["ft_adamw"]["grid"]["lr"]   # only a named point of the grid is declared (its own values)
    job = resolve_job(STAGES_BY_NAME["finetune"], cfg, {"dataset": "digits", "model": "tiny", "method": "ft_adamw",
                                                        "hp": "epochs1_lr0.001", "seed": "0"})
    assert job.point == {"lr": 1e-3}   # the grid point reaches the stage through the job, not the view


def test_model_kwargs_are_declared_by_every_stage_that_builds_the_model(tiny_workdir):
    """The stale-cache bug: backbone read model_kwargs without declaring it, so editing it re-ran nothing."""
    cfg = load_params("params.yaml")
    before = copy.deepcopy({st.name: [st.param_values(cfg, wc) for wc in st.jobs(cfg)] for st in STAGES})
    cfg["models"]["tiny"]["model_kwargs"] = {"drop_rate": 0.1}
    changed = {st.name for st in STAGES if [st.param_values(cfg, wc) for wc in st.jobs(cfg)] != before[st.name]}
    assert {"backbone", "features", "grad_norms", "finetune", "evaluate", "wise_ft", "soup"} <= changed


@pytest.fixture
def every_method(tiny_workdir):
    """The tiny config with a method per registry part: both inits, every optimizer, L2-SP and each policy."""
    cfg = yaml.safe_load((tiny_workdir / "params.yaml").read_text())
    methods = cfg["methods"]
    methods["spd"]["grid"] = {"spd_lambda": [0.5]}
    methods["slow_embed"] = {"init": "random", "optimizer": "sgd", "lr": 1e-3, "embed_lr_multiplier": 0.2,
                             "freeze": "patch_embed"}
    methods["decayed"] = {"init": "random", "optimizer": "adamw", "lr": 1e-3, "layer_decay": 0.75}
    cfg["experiment"]["methods"] = ["ft_adamw", "lpft", "ft_sgd", "spd", "adamp", "sgdp", "l2sp", "slow_embed",
                                    "decayed"]
    cfg["experiment"]["seeds"] = [0]
    cfg["soups"] = {"methods": ["ft_adamw", "spd", "slow_embed"]}
    (tiny_workdir / "paper/recipes").mkdir(parents=True, exist_ok=True)
    (tiny_workdir / "paper/recipes/tiny.yaml").write_text(yaml.safe_dump({"paper": "P", "rows": [
        {"setting": "methods.spd.grid.spd_lambda", "dataset": "digits", "official": [0.5], "source": "paper"},
        {"setting": "linear_probe.max_iter", "dataset": "digits", "official": 30, "source": "paper"}]}))
    cfg["report"]["recipe"] = "paper/recipes/tiny.yaml"
    # a similarity source that is no experiment dataset: prepared and featurised for the similarity stage
    cfg["datasets"]["digits_source"] = {**cfg["datasets"]["digits"], "build": {
        **cfg["datasets"]["digits"]["build"], "train_per_class": 3, "val_per_class": 1, "seed": 1}}
    cfg["analysis"]["similarity"] = {"source": "digits_source", "max_per_class": 2}
    (tiny_workdir / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_params(tiny_workdir / "params.yaml")


def test_every_stage_main_reads_only_what_it_declares(every_method, monkeypatch):
    jobs = []
    real = job_module.resolve_job

    def recording(*args, **kwargs):
        jobs.append(real(*args, **kwargs))
        return jobs[-1]

    monkeypatch.setattr(job_module, "resolve_job", recording)
    ran = set()
    for st in STAGES:
        if st.name == "paper" and shutil.which("latexmk") is None:
            continue
        main = importlib.import_module(st.module).main
        for wc in st.jobs(every_method):
            argv = [a for w in st.wildcards for a in (f"--{w}", wc[w])]
            assert main(argv) in (0, None), f"{st.name} {argv}"
            ran.add(st.name)
    # no job for a timm model on digits: download (nothing to fetch; tests/test_download_stage.py runs its
    # main) and zeroshot (OpenCLIP models only; tests/test_zeroshot_stages.py)
    assert ran >= set(STAGES_BY_NAME) - {"paper", "download", "zeroshot"}
    for job in jobs:   # nothing outside the declaration was read (it would have raised), and something was
        assert all(Declared.of(job.stage, job.wildcards).whole(tuple(r.split("."))) for r in job.params.reads)
        if job.stage.params:
            assert job.params.reads, f"{job.stage.name} declares params but read none"
