"""The zero-shot path end to end through the real stages, with a tiny random OpenCLIP model (no download).

No packaged model can serve the demo's zero-shot row, so this runs it instead: the digits task,
an OpenCLIP ViT built from a config file, its zero-shot head from the text tower and the
digits' class names and templates, two fine-tunes started from that head, WiSE-FT over every
key (head included), a soup of both, and the report with its "Zero-shot" row.
"""
import importlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_params

from pipeline.config import ParamsError, load_params, validate
from pipeline.models.backbone import load_state
from pipeline.stages.registry import STAGES

TINY = {"embed_dim": 16, "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}}
RUN = Path("results/digits/clip")


def clip_params(workdir: Path) -> dict:
    (workdir / "pipeline-zs-vit.json").write_text(json.dumps(TINY))
    cfg = tiny_params()
    cfg["models"] = {"clip": {"open_clip": "pipeline-zs-vit", "config": str(workdir / "pipeline-zs-vit.json"),
                              "weights": "none"}}
    cfg["methods"] = {"zs_adamw": {"init": "zeroshot", "optimizer": "adamw", "lr": 1e-3},
                      "zs_sgd": {"init": "zeroshot", "optimizer": "sgd", "lr": 1e-2}}
    cfg["experiment"] = {"datasets": ["digits"], "models": ["clip"], "methods": ["zs_adamw", "zs_sgd"], "seeds": [0]}
    cfg["wise_ft"] = {"alphas": [0.0, 0.5, 1.0], "methods": ["zs_adamw"]}
    cfg["soups"] = {"methods": ["zs_adamw", "zs_sgd"]}
    cfg["report"]["labels"] = {"zs_adamw": "FT (AdamW) from zero-shot", "zs_sgd": "FT (SGD) from zero-shot"}
    cfg["report"].update(baseline="zeroshot", tables=["wise_ft", "results"])
    return cfg


@pytest.fixture
def ran(tiny_workdir):
    cfg = clip_params(tiny_workdir)
    (tiny_workdir / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    from pipeline.tools.preflight import check

    loaded = load_params("params.yaml")
    check(loaded)
    torch.set_num_threads(1)   # tiny models: threads only spin
    for st in STAGES:
        if st.name in ("paper", "lpft_theory"):
            continue
        main = importlib.import_module(st.module).main
        for wc in st.jobs(loaded):
            assert main([a for w in st.wildcards for a in (f"--{w}", wc[w])]) in (0, None), (st.name, wc)
    return loaded


def test_zero_shot_head_wise_ft_soup_and_report(ran):
    head = load_state(RUN / "zeroshot/head.safetensors")
    assert head["weight"].shape == (10, TINY["embed_dim"]) and torch.count_nonzero(head["bias"]) == 0
    scale = head["weight"].norm(dim=1)
    assert torch.allclose(scale, torch.full((10,), math.exp(math.log(1 / 0.07))), rtol=1e-4)   # unit x logit scale
    zs = pd.read_csv(RUN / "zeroshot/metrics.csv")
    assert set(zs["method"]) == {"zeroshot"} and "ood_test" in set(zs["split"])

    # a fine-tune from the zero-shot head keeps exactly the zero-shot model's keys
    weights = load_state("data/weights/clip.safetensors")
    tuned = load_state(RUN / "zs_adamw/epochs1_lr0.001/seed0/model.safetensors")
    visual = {k for k in weights if k.startswith("visual.")}
    assert set(tuned) == visual | {"head.weight", "head.bias"}

    # WiSE-FT interpolates every key, head included: alpha = 0 is the zero-shot model itself
    curve = pd.read_csv(RUN / "zs_adamw/epochs1_lr0.001/seed0/wise_ft.csv")
    at0 = curve[(curve["alpha"] == 0.0) & (curve["selection"] == "grid")]
    keys = ["split", "domain", "metric"]
    merged = at0.merge(zs, on=keys, suffixes=("_wise", "_zs"))
    assert len(merged) == len(zs) and (merged["value_wise"] == merged["value_zs"]).all()

    soup = json.loads((RUN / "soup/seed0/soup.json").read_text())
    assert len(soup["ingredients"]) == 2

    results = pd.read_csv("results/report/results.csv")
    assert "zeroshot" in set(results["method"])
    table = Path("paper/tables/results.tex").read_text()
    assert "Zero-shot &" in table and table.index("Zero-shot &") < table.index("LP &")
    assert Path("paper/figures/id_vs_ood.pdf").stat().st_size > 1000
    # the WiSE-FT paper's table: zero-shot, fine-tuned, WiSE-FT at alpha 0.5 and at alpha on ID val
    wise = Path("paper/tables/wise_ft.tex").read_text()
    labels = [ln.split(" & ")[0] for ln in wise.splitlines()
              if " & " in ln and not ln.startswith(("\\textbf", "Model"))]
    assert labels == ["Zero-shot", "FT (AdamW) from zero-shot", r"FT (AdamW) from zero-shot + WiSE-FT, $\alpha$ 0.5",
                      "FT (AdamW) from zero-shot + WiSE-FT"]
    assert Path("paper/tables/tables.tex").read_text().splitlines()[1] == r"\input{tables/wise_ft}"
    # every run's predictions are saved once, and the zero-shot model is the comparisons' baseline
    assert (RUN / "zeroshot/predictions.npz").is_file()
    assert (RUN / "zs_adamw/epochs1_lr0.001/seed0/wise_ft_predictions.npz").is_file()
    summary = pd.read_csv("results/report/summary.csv")
    assert set(summary.loc[summary["delta"].notna(), "baseline"]) == {"zeroshot"}


def test_zero_shot_errors_are_one_line_before_any_job(tiny_workdir, monkeypatch):
    from pipeline.data import prompts
    from pipeline.tools.preflight import check

    cfg = clip_params(tiny_workdir)
    timm_cfg = tiny_params()
    timm_cfg["methods"]["ft_adamw"]["init"] = "zeroshot"
    with pytest.raises(ParamsError, match=r"methods.ft_adamw.init: zeroshot needs a CLIP text tower, but "
                                          r"models.tiny is a timm model"):
        validate(timm_cfg)
    cfg["models"]["clip"] = {"open_clip": "ViT-B-61", "weights": "none"}
    with pytest.raises(ParamsError, match=r"models.clip.open_clip: unknown OpenCLIP model 'ViT-B-61'; close names"):
        check(validate(cfg))
    cfg = clip_params(tiny_workdir)
    cfg["models"]["clip"] = {"open_clip": "ViT-B-16", "weights": "checkpoints/openai_vit_b16.safetensors"}
    with pytest.raises(ParamsError, match=r"models.clip.weights: weights file not found: "
                                          r"checkpoints/openai_vit_b16.safetensors"):
        check(validate(cfg))
    cfg = clip_params(tiny_workdir)
    monkeypatch.setattr(prompts, "has_prompts", lambda source: False)   # a source without class names
    with pytest.raises(ParamsError, match=r"datasets.digits.source: 'digits' has no class names"):
        check(validate(cfg))
