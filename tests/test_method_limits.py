"""A method limited to some models or datasets (``methods.<m>.models`` / ``.datasets``): which runs exist.

The limits decide the jobs in both runners (the registry, Snakemake's dry run, the rendered dvc.yaml); they are
not a run's settings, so growing a limit adds runs and leaves the tracked params of the existing ones as
they were; a limit that names nothing defined, or leaves a method without a run, is refused in one line.
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO, run_cli, tiny_params

from pipeline.config import ParamsError, load_params, validate
from pipeline.stages.registry import STAGES_BY_NAME
from pipeline.tools.dvc_render import render

BIN = Path(PYTHON).parent
FINETUNE = STAGES_BY_NAME["finetune"]


def two_models() -> dict:
    """The tiny config with a second model and LP-FT limited to the first."""
    cfg = tiny_params()
    cfg["models"]["small"] = {"timm_name": "test_efficientnet", "weights": "none"}
    cfg["experiment"]["models"] = ["tiny", "small"]
    cfg["methods"]["lpft"]["models"] = ["tiny"]
    return cfg


def test_the_freeze_embed_config_runs_sgd_without_momentum_on_clip_vit_b16_only():
    cfg = load_params(REPO / "configs/freeze_embed.yaml")
    runs = Counter((wc["method"], wc["model"]) for wc in FINETUNE.jobs(cfg))
    assert {m for (method, m) in runs if method == "sgd_no_momentum"} == {"clip_vit_b16"}
    # 1 model x 5 datasets x 6 learning rates x 3 seeds, as the paper's ablation; the other methods keep all 7
    assert sum(n for (method, _), n in runs.items() if method == "sgd_no_momentum") == 90
    assert sum(n for (method, _), n in runs.items() if method == "sgd") == 7 * 90
    unlimited = copy.deepcopy(dict(cfg))
    del unlimited["methods"]["sgd_no_momentum"]["models"]
    assert len(FINETUNE.jobs(unlimited)) - len(FINETUNE.jobs(cfg)) == 540   # fine-tunes saved


def test_limits_decide_the_jobs_and_are_not_tracked_params():
    cfg = validate(two_models())
    jobs = FINETUNE.jobs(cfg)
    assert {wc["model"] for wc in jobs if wc["method"] == "lpft"} == {"tiny"}
    assert {wc["model"] for wc in jobs if wc["method"] == "ft_adamw"} == {"tiny", "small"}
    assert all(wc["model"] == "tiny" for wc in STAGES_BY_NAME["wise_ft"].jobs(cfg) if wc["method"] == "lpft")
    before = {FINETUNE.job_id(wc): FINETUNE.param_values(cfg, wc) for wc in jobs}
    assert not any(k.endswith((".models", ".datasets")) for v in before.values() for k in v)

    grown = copy.deepcopy(cfg)
    grown["methods"]["lpft"]["models"].append("small")   # growing the limit adds runs, re-runs none
    after = {FINETUNE.job_id(wc): FINETUNE.param_values(grown, wc) for wc in FINETUNE.jobs(grown)}
    assert set(before) < set(after) and all(after[j] == v for j, v in before.items())
    assert len(after) - len(before) == len(cfg["experiment"]["seeds"])


def test_a_soup_needs_ingredients():
    """A model whose every soup method is limited away gets no soup job."""
    cfg = two_models()
    cfg["methods"]["ft_adamw"]["models"] = ["tiny"]
    cfg = validate(cfg)
    assert {wc["model"] for wc in STAGES_BY_NAME["soup"].jobs(cfg)} == {"tiny"}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["methods"]["lpft"].__setitem__("models", ["tiyn"]), "methods.lpft.models[0]: unknown model 'tiyn'"),
    (lambda c: c["methods"]["lpft"].__setitem__("datasets", ["mnist"]),
     "methods.lpft.datasets[0]: unknown dataset 'mnist'"),
    (lambda c: c["experiment"].__setitem__("models", ["small"]), "methods.lpft: limited to models ['tiny'], it "
                                                                 "has no run in this experiment"),
    (lambda c: c["methods"]["lpft"].__setitem__("models", []), "methods.lpft.models: 0 items, at least 1"),
])
def test_a_bad_limit_is_one_line(edit, message):
    cfg = two_models()
    edit(cfg)
    with pytest.raises(ParamsError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_both_runners_plan_the_limited_jobs(tmp_path):
    """Snakemake's dry run and the rendered dvc.yaml hold the same limited fine-tunes."""
    from test_pipeline_e2e import copy_project, snakemake_jobs

    cfg = two_models()
    copy_project(tmp_path, cfg)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = run_cli(str(BIN / "snakemake"), "-n", "--quiet", "rules", cwd=tmp_path, env=env).stdout
    expected = Counter(wc["method"] for wc in FINETUNE.jobs(validate(copy.deepcopy(cfg))))
    assert expected == Counter({"ft_adamw": 4, "lpft": 2})
    assert snakemake_jobs(out)["finetune"] == 6
    stages = yaml.safe_load(render(validate(copy.deepcopy(cfg))))["stages"]
    lpft = sorted(s for s in stages if s.startswith("finetune--") and "--lpft--" in s)
    assert len(lpft) == 2 and all(s.startswith("finetune--digits--tiny--lpft--") for s in lpft)
    assert [s.rsplit("--", 1)[1] for s in lpft] == ["seed0", "seed1"]   # tiny only: the limit
