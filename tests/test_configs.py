"""The shipped experiment configs: valid, the sweep they describe, and selected by one flag."""
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, REPO, run_cli

from pipeline.config import load_params
from pipeline.config.settings import hp_names, method_config, method_settings, run_points
from pipeline.data.sources import SOURCES
from pipeline.stages.registry import STAGES, STAGES_BY_NAME
from pipeline.tools.dvc_render import render

CONFIGS = sorted(REPO.glob("configs/*.yaml"))
BIN = Path(PYTHON).parent
def n_jobs(cfg: dict) -> int:
    return sum(len(st.jobs(cfg)) for st in STAGES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_uses_real_datasets(path):
    cfg = load_params(path)
    assert {ds["source"] for ds in cfg["datasets"].values()} <= set(SOURCES) - {"digits"}
    # 3 seeds as in the freeze-embed and LP-FT papers; the WiSE-FT, soups and Li et al. papers state none
    assert cfg["experiment"]["seeds"] == ([0] if path.stem in ("wise_ft", "soups", "hyperparams") else [0, 1, 2])


def test_hyperparams_config_is_li_et_als_grid_and_schedule():
    """Li et al. 2020, section 3.1: the 6 x 5 x 4 grid, batch 256, 300 epochs, x0.1 at 150 and 250, last epoch."""
    cfg = load_params(REPO / "configs/hyperparams.yaml")
    targets = ["stanford_dogs", "caltech256", "mit_indoor67", "cub200", "stanford_cars", "fgvc_aircraft", "flowers102"]
    assert cfg["experiment"]["datasets"] == targets
    grid = cfg["methods"]["sgd"]["grid"]
    assert grid == {"lr": [0.1, 0.05, 0.01, 0.005, 0.001, 0.0001], "momentum": [0.9, 0.99, 0.95, 0.8, 0.0],
                    "weight_decay": [0.0, 0.0001, 0.0005, 0.001]}
    points = run_points(cfg, "sgd", "cub200")
    assert len(points) == 120 and hp_names(cfg, "sgd", "cub200") == list(points)
    names = {(p["lr"], p["momentum"], p["weight_decay"]): name for name, p in points.items()}
    assert (0.01, 0.9, 0.0001) in names   # the common default is a point
    s = method_settings(cfg, "sgd", names[(0.1, 0.99, 0.001)], "cub200")
    assert (s["optimizer"], s["lr"], s["momentum"], s["weight_decay"]) == ("sgd", 0.1, 0.99, 0.001)
    assert (s["batch_size"], s["epochs"], s["schedule"], s["milestones"], s["milestone_factor"], s["select"]) == \
        (256, 300, "multistep", [150, 250], 0.1, "last")
    assert {m["timm_name"] for m in cfg["models"].values()} == {
        "resnet101.gluon_in1k", "densenet121.tv_in1k", "mobilenetv1_100.ra4_e3600_r224_in1k"}
    # ImageNet is the similarity source only: prepared and featurised, never fine-tuned
    jobs = {st.name: {j.get("dataset") for j in st.jobs(cfg)} for st in STAGES}
    assert "imagenet" in jobs["features"] and "imagenet" not in jobs["finetune"] | jobs["linear_probe"]
    assert len(STAGES_BY_NAME["finetune"].jobs(cfg)) == 7 * 3 * 120
    assert len(STAGES_BY_NAME["similarity"].jobs(cfg)) == 7 * 3


def test_freeze_embed_sweep_is_the_papers_table():
    cfg = load_params(REPO / "configs/freeze_embed.yaml")
    assert cfg["experiment"]["datasets"] == ["living17", "waterbirds", "domainnet", "fmow", "camelyon17"]
    assert cfg["models"]["clip_vit_b16"]["timm_name"] == "vit_base_patch16_clip_224.openai"
    runs = STAGES_BY_NAME["finetune"].jobs(cfg)
    assert len(cfg["experiment"]["models"]) == 7   # the paper averages over 7 backbones
    # SGD without momentum on CLIP ViT-B/16 only (methods.sgd_no_momentum.models), as the paper ran it
    assert len(runs) == 5 * 7 * 3 * 6 * 3 + 5 * 1 * 6 * 3
    assert n_jobs(cfg) > 1000
    # per-dataset epochs of the paper, under the method's own settings (a run's name spells them)
    assert method_settings(cfg, "sgd", "epochs3_lr0.001", "camelyon17")["epochs"] == 3
    assert method_settings(cfg, "sgd", "epochs50_lr0.001", "domainnet")["epochs"] == 50
    assert method_settings(cfg, "freeze_embed", "epochs5_lr0.001", "fmow")["freeze"] == "embed"


def test_lpft_config_runs_each_dataset_with_the_papers_backbone():
    cfg = load_params(REPO / "configs/lpft.yaml")
    pairs = {(j["dataset"], j["model"]) for j in STAGES_BY_NAME["features"].jobs(cfg)}
    assert pairs == {("cifar10", "moco_v2_r50"), ("entity30", "moco_v2_r50"), ("living17", "moco_v2_r50"),
                     ("domainnet", "clip_r50"), ("fmow", "moco_tp_r50"), ("imagenet", "clip_vit_b16")}
    runs = STAGES_BY_NAME["finetune"].jobs(cfg)
    # 6 learning rates per method, but ImageNet's own 3 (the LP-FT code's per-dataset grids)
    assert len(runs) == 5 * 2 * 6 * 3 + 2 * 3 * 3 and {r["model"] for r in runs if r["dataset"] == "fmow"} == \
        {"moco_tp_r50"}
    assert sorted({r["hp"] for r in runs if r["dataset"] == "imagenet" and r["method"] == "lpft"}) == \
        sorted(["epochs10_lr1e-05", "epochs10_lr3e-05", "epochs10_lr0.0001"])
    assert method_settings(cfg, "ft", "epochs10_lr0.001", "imagenet")["batch_size"] == 128
    assert method_settings(cfg, "ft", "epochs20_lr0.001", "living17")["batch_size"] == 64
    assert method_settings(cfg, "ft", "epochs50_lr0.001", "fmow")["epochs"] == 50
    assert cfg["models"]["moco_v2_r50"]["weights_prefix"] == "module.encoder_q."


def test_wise_ft_runs_on_all_of_imagenet_and_soups_from_the_lp():
    wise = load_params(REPO / "configs/wise_ft.yaml")
    assert wise["models"]["clip_vit_b16"]["open_clip"] == "ViT-B-16"
    assert wise["wise_ft"]["alphas"] == [round(0.1 * i, 1) for i in range(11)]
    s = method_settings(wise, "ft", dataset="imagenet")
    assert (s["init"], s["optimizer"], s["lr"], s["weight_decay"], s["batch_size"], s["epochs"], s["grad_clip"]) == \
        ("zeroshot", "adamw", 3e-5, 0.1, 512, 10, 1.0)
    assert wise["datasets"]["imagenet"]["id_val_held_out"] is False and wise["wise_ft"]["select"] == "fixed"
    zeroshot = STAGES_BY_NAME["zeroshot"].jobs(wise)
    assert zeroshot == [{"dataset": "imagenet", "model": "clip_vit_b16"}]
    soups = load_params(REPO / "configs/soups.yaml")
    assert soups["soups"] == {"methods": ["ft"], "include_lp": True} and soups["methods"]["ft"]["init"] == "lp"
    runs = STAGES_BY_NAME["finetune"].jobs(soups)
    assert [r["hp"] for r in runs] == [f"model_{i}" for i in range(1, 72)]   # + model_0, the LP: 72 ingredients
    assert len(STAGES_BY_NAME["soup"].inputs(soups, {"dataset": "imagenet", "model": "clip_vit_b32", "seed": "0"})[
        "models"]) == 71
    model_8 = method_settings(soups, "ft", "model_8", "imagenet")   # hparam_info.json at full precision
    assert (model_8["lr"], model_8["weight_decay"], model_8["epochs"]) == (1.0196553769215954e-05, 0.006201569732374127,
                                                                          11)
    assert method_config(soups, "ft", "imagenet")["grid"]["points"]["model_4"] == \
        method_config(soups, "ft", "imagenet")["grid"]["points"]["model_5"]


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
