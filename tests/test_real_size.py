"""Every backbone the papers' configs name, at its real size, through the real stages (random weights).

One test per architecture of ``configs/*.yaml`` (entries that differ only in their pretrained
weights share one, e.g. the in21k and DINO ViT-B/16; OpenCLIP models with both towers, their
zero-shot head and a fine-tune started from it): the digits task built at the model's 224 px
input size (2 classes, a few images each), then prepare_data, backbone, features, linear_probe,
grad_norms, the methods whose code differs per architecture family for a step or two (head
initialisation: random and LP; freeze-embed; SPD's head/body groups), evaluate, WiSE-FT (the LP-FT
head interpolated, the fresh head kept), soups and the report, each through its stage's ``main``.
It checks the frozen groups and parameter counts of freeze-embed against counts made by hand,
that every selected checkpoint and metric file exists, and that the report renders. Minutes on
2 CPU cores (ViT-L/14 alone about two): marked slow.
"""
import importlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_params

from pipeline.config.settings import hp_names
from pipeline.stages.registry import STAGES

# One worker runs them in turn: two ViT-L/14 fine-tunes side by side take more than a 24 GB machine's memory.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("real_size")]


# The classifier forms besides the default (pipeline/models/heads.py, openclip.py): every CLIP architecture
# is also run in the other form, whether or not a config asks for it yet.
HEAD_FORMS = {"timm": ("head", "project"), "open_clip": ("normalize_features", False)}


def _form(entry: dict) -> tuple[str, str, object] | None:
    """(family, key, value) of an entry's non-default classifier form, else None."""
    family = "open_clip" if "open_clip" in entry else "timm"
    key, value = HEAD_FORMS[family]
    return (family, key, value) if key in entry and entry[key] == value else None


def architectures() -> list[dict]:
    """One record per distinct architecture and classifier form in the configs: its model entry (random
    weights) and the config entries it stands for. ``arch`` is the architecture (the FROZEN key); ``id`` adds
    the form."""
    found: dict[str, dict] = {}

    def add(arch: str, model: dict, form: tuple | None, label: str, freeze: bool) -> None:
        model = {**model, form[1]: form[2]} if form else model
        rid = f"{arch}+{form[1]}={form[2]}" if form else arch
        rec = found.setdefault(rid, {"id": rid, "arch": arch, "model": model, "entries": [], "freeze": False})
        rec["entries"].append(label)
        rec["freeze"] |= freeze

    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        freezes = any(m.get("freeze", "none") != "none" for m in cfg["methods"].values())
        for name, entry in cfg["models"].items():
            if "open_clip" in entry:   # OpenCLIP: the image and text towers; no pretrained tag
                arch, model = f"open_clip:{entry['open_clip']}", {"open_clip": entry["open_clip"], "weights": "none"}
                clip = True
            else:
                arch, model = entry["timm_name"].split(".")[0], {"timm_name": entry["timm_name"], "weights": "none"}
                clip = "_clip" in arch
            freeze = freezes and name in cfg["experiment"]["models"]
            add(arch, model, _form(entry), f"{path.stem}:{name}", freeze)
            if clip:   # the other form of a CLIP model: the projection kept (timm), features unnormalised (OpenCLIP)
                family = "open_clip" if "open_clip" in entry else "timm"
                other = None if _form(entry) else (family, *HEAD_FORMS[family])
                add(arch, model, other, f"{path.stem}:{name} (other form)", freeze)
    return list(found.values())


ARCHS = architectures()

# Freeze-embed (the bottom two layer groups) per family, counted by hand from the architectures:
# the frozen groups and their parameters.
FROZEN = {
    # CLIP ViTs: patch embedding without bias (pre-norm) + ln_pre (timm's norm_pre)
    "vit_base_patch16_clip_224": (["patch_embed", "norm_pre"], 768 * 3 * 16 * 16 + 2 * 768),
    "vit_large_patch14_clip_224": (["patch_embed", "norm_pre"], 1024 * 3 * 14 * 14 + 2 * 1024),
    # plain ViT-B/16: patch embedding with bias; norm_pre is an empty placeholder
    "vit_base_patch16_224": (["patch_embed", "norm_pre"], 768 * 3 * 16 * 16 + 768),
    # ConvNeXt-B: stem (4x4 conv 3->128 + bias, LayerNorm) + stage 0 (3 blocks at width 128:
    # 7x7 depthwise + bias, LayerNorm, MLP 128->512->128 with biases, layer scale)
    "convnext_base": (["stem", "stages.0"], (4 * 4 * 3 * 128 + 128 + 2 * 128)
                      + 3 * (7 * 7 * 128 + 128 + 2 * 128 + 128 * 512 + 512 + 512 * 128 + 128 + 128)),
    # BiT ResNetV2 (pre-activation, weight-standardised convs without bias): the 7x7 stem conv, and
    # stage 0: block 0 (GN 64, 1x1 64->64, GN 64, 3x3 64->64, GN 64, 1x1 64->256, projection 64->256)
    # and blocks 1-2 (GN 256, 1x1 256->64, GN 64, 3x3, GN 64, 1x1 64->256)
    "resnetv2_50x1_bit": (["stem", "stages.0"], 7 * 7 * 3 * 64
                          + (2 * 64 + 64 * 64 + 2 * 64 + 9 * 64 * 64 + 2 * 64 + 64 * 256 + 64 * 256)
                          + 2 * (2 * 256 + 256 * 64 + 2 * 64 + 9 * 64 * 64 + 2 * 64 + 64 * 256)),
}
FROZEN["resnetv2_101x1_bit"] = FROZEN["resnetv2_50x1_bit"]   # the same stem and first stage
for _size in ("base_patch16", "large_patch14"):   # OpenAI's activation (QuickGELU) has no parameters
    FROZEN[f"vit_{_size}_clip_quickgelu_224"] = FROZEN[f"vit_{_size}_clip_224"]


def params_for(rec: dict) -> dict:
    cfg = tiny_params()
    cfg["models"] = {"tiny": rec["model"]}
    cfg["datasets"]["digits"]["storage_size"] = 224   # each model's own eval transform and input size from there
    cfg["datasets"]["digits"]["build"] = {"classes": 2, "train_per_class": 2,
                                          "val_per_class": 1, "test_per_class": 1, "ood_per_class": 2, "seed": 0}
    methods = {"ft": {"init": "random", "optimizer": "adamw", "lr": 1e-4},
               "lpft": {"init": "lp", "optimizer": "sgd", "lr": 1e-4},
               "spd": {"init": "random", "optimizer": "spd", "lr": 1e-4, "spd_lambda": 0.5}}
    if rec["freeze"]:
        methods["freeze_embed"] = {"init": "random", "optimizer": "sgd", "lr": 1e-3, "freeze": "embed"}
    clip = "open_clip" in rec["model"]
    if clip and rec["model"].get("normalize_features", True):   # WiSE-FT / soups: end to end from the zero-shot head
        methods["ft"] = {"init": "zeroshot", "optimizer": "adamw", "lr": 1e-4}
    cfg["methods"] = methods
    cfg["experiment"] = {"datasets": ["digits"], "models": ["tiny"], "methods": list(methods), "seeds": [0]}
    cfg["finetune"] = {"epochs": 1, "batch_size": 2, "warmup_epochs": 0}
    cfg["linear_probe"] = {"C_min": 0.1, "C_max": 1.0, "num_C": 2, "max_iter": 10}
    cfg["features"] = {"batch_size": 16}
    cfg["evaluate"] = {"batch_size": 16}
    cfg["wise_ft"] = {"alphas": [0.5, 1.0], "methods": ["ft", "lpft"]}
    cfg["soups"] = {"methods": [m for m in methods if methods[m]["init"] == methods["ft"]["init"]]}
    cfg["analysis"] = {"lpft_theory": {"eps": [0.0], "seeds": 1}, "grad_norms": {"batch_size": 2}}
    cfg["report"].update(labels={m: m for m in methods}, baseline="ft")
    return cfg


@pytest.mark.parametrize("rec", ARCHS, ids=[r["id"] for r in ARCHS])
def test_backbone_through_every_stage(rec, tmp_path, monkeypatch, capsys):
    cfg = params_for(rec)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copytree(REPO / "paper", tmp_path / "paper", ignore=shutil.ignore_patterns("tables", "figures", "*.pdf"))
    monkeypatch.chdir(tmp_path)
    from pipeline.config import load_params
    from pipeline.tools.preflight import check

    loaded = load_params("params.yaml")
    check(loaded)   # the up-front checks pass for the real architecture at its size
    seconds = {}
    try:
        for st in STAGES:
            if st.name in ("paper", "lpft_theory"):
                continue
            main = importlib.import_module(st.module).main
            t0 = time.perf_counter()
            for wc in st.jobs(loaded):
                assert main([a for w in st.wildcards for a in (f"--{w}", wc[w])]) in (0, None), (st.name, wc)
            seconds[st.name] = round(time.perf_counter() - t0, 1)
        check_outputs(rec, loaded)
    finally:
        with capsys.disabled():
            print(f"\n[real size] {rec['id']} ({', '.join(rec['entries'])}): {sum(seconds.values()):.0f}s {seconds}")
        shutil.rmtree(tmp_path / "data", ignore_errors=True)   # GBs of weights: not kept by pytest's tmp dirs
        shutil.rmtree(tmp_path / "results", ignore_errors=True)


def check_outputs(rec: dict, cfg: dict) -> None:
    run = Path("results/digits/tiny")
    assert (run / "lp/head.safetensors").is_file() and (run / "features.safetensors").is_file()
    if rec["model"].get("head") == "project":   # the projection kept: the probe is on its outputs, fc on top
        from pipeline.models.backbone import load_state

        lp = load_state(run / "lp/head.safetensors")
        ft = load_state(run / "lpft" / hp_names(cfg, "lpft", "digits")[0] / "seed0/model.safetensors")
        fc = [k for k in ft if k.endswith(".fc.weight")]
        assert len(fc) == 1 and ft[fc[0]].shape == lp["weight"].shape
        assert ft[fc[0].replace(".fc.", ".proj.")].shape[0] == lp["weight"].shape[1]
    for method in cfg["experiment"]["methods"]:
        d = run / method / hp_names(cfg, method, "digits")[0] / "seed0"
        for name in ("model.safetensors", "metrics.csv", "history.csv", "run.json", "layers.csv", "cost.json"):
            assert (d / name).is_file(), d / name
        facts = json.loads((d / "run.json").read_text())
        if method == "freeze_embed":
            groups, frozen = FROZEN[rec["arch"]]
            assert facts["frozen_groups"] == groups
            assert facts["frozen_params"] == frozen, (facts["frozen_params"], frozen)
            assert 0 < facts["frozen_fraction"] < 0.02
        else:
            assert facts["frozen_params"] == 0
    for method in cfg["wise_ft"]["methods"]:
        curve = pd.read_csv(run / method / hp_names(cfg, method, "digits")[0] / "seed0/wise_ft.csv")
        assert set(curve["alpha"]) == {0.5, 1.0} and {"grid", "id_val"} <= set(curve["selection"])
    soup = json.loads((run / "soup/seed0/soup.json").read_text())
    assert len(soup["ingredients"]) == len(cfg["soups"]["methods"])
    assert (run / "soup/seed0/metrics.csv").is_file()
    results = pd.read_csv("results/report/results.csv")
    assert {"lp", "ft", "lpft", "spd", "uniform_soup", "greedy_soup"} <= set(results["method"])
    if "open_clip" in rec["model"]:
        assert (run / "zeroshot/head.safetensors").is_file() and "zeroshot" in set(results["method"])
    table = Path("paper/tables/results.tex").read_text()
    assert r"\begin{tabular}" in table and "lpft" in table
    for figure in ("id_vs_ood.pdf", "grad_norms.pdf", "layers.pdf"):
        assert Path("paper/figures", figure).stat().st_size > 1000
