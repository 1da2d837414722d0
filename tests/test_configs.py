"""The shipped experiment configs: valid, the sweep they describe, and selected by one flag."""
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO, run_cli

from pipeline.config import load_params
from pipeline.config.settings import method_settings
from pipeline.data.sources import SOURCES
from pipeline.dvc_render import render
from pipeline.stages import STAGES, STAGES_BY_NAME

CONFIGS = sorted(REPO.glob("configs/*.yaml"))
BIN = Path(PYTHON).parent


def n_jobs(cfg: dict) -> int:
    return sum(len(st.jobs(cfg)) for st in STAGES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_uses_real_datasets(path):
    cfg = load_params(path)
    assert {ds["source"] for ds in cfg["datasets"].values()} <= set(SOURCES) - {"digits"}
    # 3 seeds as in the freeze-embed and LP-FT papers; the WiSE-FT and soups papers do not seed their runs
    assert cfg["experiment"]["seeds"] == ([0] if path.stem in ("wise_ft", "soups") else [0, 1, 2])


def test_freeze_embed_sweep_is_the_papers_table():
    cfg = load_params(REPO / "configs/freeze_embed.yaml")
    assert cfg["experiment"]["datasets"] == ["living17", "waterbirds", "domainnet", "fmow", "camelyon17"]
    assert cfg["models"]["clip_vit_b16"]["timm_name"] == "vit_base_patch16_clip_224.openai"
    runs = STAGES_BY_NAME["finetune"].jobs(cfg)
    assert len(cfg["experiment"]["models"]) == 7   # the paper averages over 7 backbones
    assert len(runs) == 5 * 7 * 4 * 6 * 3
    assert n_jobs(cfg) > 1000
    # per-dataset epochs of the paper, under the method's own settings
    assert method_settings(cfg, "sgd", "lr0.001", "camelyon17")["epochs"] == 3
    assert method_settings(cfg, "sgd", "lr0.001", "domainnet")["epochs"] == 50
    assert method_settings(cfg, "freeze_embed", "lr0.001", "fmow")["freeze"] == "embed"


def test_lpft_config_runs_each_dataset_with_the_papers_backbone():
    cfg = load_params(REPO / "configs/lpft.yaml")
    pairs = {(j["dataset"], j["model"]) for j in STAGES_BY_NAME["features"].jobs(cfg)}
    assert pairs == {("cifar10", "moco_v2_r50"), ("entity30", "moco_v2_r50"), ("living17", "moco_v2_r50"),
                     ("domainnet", "clip_r50"), ("fmow", "moco_tp_r50"), ("imagenet", "clip_vit_b16")}
    runs = STAGES_BY_NAME["finetune"].jobs(cfg)
    assert len(runs) == 6 * 2 * 6 * 3 and {r["model"] for r in runs if r["dataset"] == "fmow"} == {"moco_tp_r50"}
    assert cfg["models"]["moco_v2_r50"]["weights_prefix"] == "module.encoder_q."


def test_wise_ft_and_soups_configs_start_from_the_zero_shot_head():
    wise = load_params(REPO / "configs/wise_ft.yaml")
    assert wise["models"]["clip_vit_b16"] == {"open_clip": "ViT-B-16", "weights": "hub:openai"}
    assert wise["wise_ft"]["alphas"] == [round(0.1 * i, 1) for i in range(11)]
    s = method_settings(wise, "ft", dataset="imagenet")
    assert (s["init"], s["optimizer"], s["lr"], s["weight_decay"], s["batch_size"], s["epochs"], s["grad_clip"]) == \
        ("zeroshot", "adamw", 3e-5, 0.1, 512, 10, 1.0)
    zeroshot = STAGES_BY_NAME["zeroshot"].jobs(wise)
    assert zeroshot == [{"dataset": "imagenet", "model": "clip_vit_b16"}]
    soups = load_params(REPO / "configs/soups.yaml")
    assert len(soups["soups"]["methods"]) == 17 and soups["soups"]["methods"] == soups["experiment"]["methods"]
    assert {soups["methods"][m]["init"] for m in soups["soups"]["methods"]} == {"zeroshot"}
    assert soups["methods"]["model_18"]["lr"] == pytest.approx(3.207e-5, rel=1e-3)


def test_another_config_is_passed_to_every_command_and_dvc_param():
    cfg = load_params(REPO / "configs/lpft.yaml")
    st = STAGES_BY_NAME["finetune"]
    wc = st.jobs(cfg)[0]
    assert st.command(wc, "configs/lpft.yaml").endswith("--params configs/lpft.yaml")
    assert "--params" not in st.command(wc)
    stages = yaml.safe_load(render(cfg, "configs/lpft.yaml"))["stages"]
    entry = stages[st.job_id(wc)]
    assert entry["cmd"].endswith("--params configs/lpft.yaml")
    assert list(entry["params"][0]) == ["configs/lpft.yaml"]


def test_snakemake_runs_a_config_selected_by_one_flag():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    target = "results/cifar10/moco_v2_r50/lp/metrics.csv"
    out = run_cli(str(BIN / "snakemake"), "-n", "-p", target, "--config", "params=configs/lpft.yaml",
                  cwd=REPO, env=env).stdout
    assert "python -m pipeline prepare_data --dataset cifar10 --params configs/lpft.yaml" in out
    assert "python -m pipeline linear_probe --dataset cifar10 --model moco_v2_r50 --params configs/lpft.yaml" in out


def test_one_datasets_jobs_by_one_more_flag():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = run_cli(str(BIN / "snakemake"), "-n", "--config", "params=configs/lpft.yaml", "datasets=cifar10",
                  cwd=REPO, env=env).stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:", 1)[1], re.M))
    cfg = load_params(REPO / "configs/lpft.yaml")
    runs = [r for r in STAGES_BY_NAME["finetune"].jobs(cfg) if r["dataset"] == "cifar10"]
    assert jobs["prepare_data"] == "1" and int(jobs["finetune"]) == len(runs) == 2 * 6 * 3
    assert "report" not in jobs and "paper" not in jobs
    res = run_cli(str(BIN / "snakemake"), "-n", "--config", "datasets=nope", cwd=REPO, env=env, check=False)
    assert res.returncode != 0 and "'nope' is not in experiment.datasets" in res.stderr
