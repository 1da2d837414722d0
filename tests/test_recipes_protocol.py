"""The papers' protocols through the real stages (issue 19): named grid points, a soup with the LP model in its
pool, WiSE-FT with a fixed alpha and the per-column oracle row, on the tiny digits task.

Model soups (mlfoundations/model-soups@d5398f1): 72 runs listed one by one (``hparam_info.json:1``, here
``grid.points``), all from the LP head, with the LP model itself (``model_0``) in the uniform and greedy soups
(``main.py:62,78,114-123,146-185``). WiSE-FT (mlfoundations/wise-ft@58b7a4b): no alpha chosen on held-out data
(``src/wise_ft.py:82-95``); the paper reports alpha 0.5 and the best alpha of each column (Table 1).
"""
import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_params

from pipeline.config import load_params
from pipeline.data.shards import PreparedDataset
from pipeline.ensembling.soup import id_val_accuracy
from pipeline.evaluation.predict import evaluate_model
from pipeline.models.backbone import head_names, model_from_config
from pipeline.models.transforms import eval_transform
from pipeline.stages.registry import STAGES

RUN = Path("results/digits/tiny")


def protocol_params() -> dict:
    cfg = tiny_params()
    cfg["experiment"].update(methods=["ft"], seeds=[0])
    cfg["methods"] = {"ft": {"init": "lp", "optimizer": "adamw", "weight_decay": 0.1, "grid": {"points": {
        "model_1": {"lr": 1e-3, "label_smoothing": 0.1}, "model_2": {"lr": 3e-4, "epochs": 2}}}}}
    cfg["wise_ft"] = {"alphas": [0.0, 0.5, 1.0], "methods": ["ft"], "select": "fixed"}
    cfg["soups"] = {"methods": ["ft"], "include_lp": True}
    cfg["report"].update(labels={"ft": "FT from LP"}, baseline="lp", tables=["wise_ft", "results", "recipe"],
                         wise_ft_optimal=True, recipe="paper/recipes/protocol.yaml")
    return cfg


# A card with each status: rows that agree, a kept difference, and one nobody explained.
CARD = {"paper": "A paper (2099)", "config": "params.yaml", "rows": [
    {"setting": "methods.ft.lr", "dataset": "digits", "hp": "model_1", "official": 1e-3,
     "source": "o/r@abc1234:x.py:1"},
    {"setting": "methods.ft.grid.lr", "dataset": "digits", "official": [1e-3, 3e-4], "source": "o/r@abc1234:x.py:2"},
    {"setting": "soups.include_lp", "official": True, "source": "o/r@abc1234:main.py:62"},
    {"setting": "wise_ft.select", "official": "fixed", "source": "paper Table 1"},
    {"setting": "methods.ft.weight_decay", "dataset": "digits", "official": 0.05, "source": "o/r@abc1234:x.py:3",
     "kept": "a tiny task needs a larger decay", "note": "the paper's value is for ImageNet"},
    {"setting": "methods.ft.optimizer", "dataset": "digits", "official": "sgd", "source": "o/r@abc1234:x.py:4"}]}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    import shutil

    from conftest import REPO

    work = tmp_path_factory.mktemp("protocols")
    shutil.copytree(REPO / "paper", work / "paper", ignore=shutil.ignore_patterns("tables", "figures", "main.pdf"))
    (work / "params.yaml").write_text(yaml.safe_dump(protocol_params(), sort_keys=False))
    (work / "paper/recipes").mkdir(parents=True, exist_ok=True)
    (work / "paper/recipes/protocol.yaml").write_text(yaml.safe_dump(CARD, sort_keys=False))
    cwd = Path.cwd()
    import os

    os.chdir(work)
    try:
        loaded = load_params("params.yaml")
        torch.set_num_threads(1)
        for st in STAGES:
            if st.name == "paper":
                continue
            main = importlib.import_module(st.module).main
            for wc in st.jobs(loaded):
                assert main([a for w in st.wildcards for a in (f"--{w}", wc[w])]) in (0, None), (st.name, wc)
        yield work, loaded
    finally:
        os.chdir(cwd)


def test_named_points_are_runs(ran):
    work, _ = ran
    runs = sorted(p.parent.name for p in (work / RUN / "ft").glob("*/seed0"))
    assert runs == ["model_1", "model_2"]
    settings = {hp: json.loads((work / RUN / "ft" / hp / "seed0/run.json").read_text())["settings"]
                for hp in runs}
    assert (settings["model_1"]["lr"], settings["model_1"]["label_smoothing"], settings["model_1"]["epochs"]) == \
        (1e-3, 0.1, 1)
    assert (settings["model_2"]["lr"], settings["model_2"]["label_smoothing"], settings["model_2"]["epochs"]) == \
        (3e-4, 0.0, 2)


def test_the_lp_model_is_in_the_soups_pool(ran):
    """model_0 of the soups' pool: the pretrained backbone with the LP head, ranked by its own ID-val accuracy."""
    work, cfg = ran
    soup = json.loads((work / RUN / "soup/seed0/soup.json").read_text())
    models = [i["model"] for i in soup["ingredients"]]
    lp_entry = "data/weights/tiny.safetensors + results/digits/tiny/lp/head.safetensors"
    assert len(models) == 3 and lp_entry in models
    lp_acc = id_val_accuracy(str(work / RUN / "lp/metrics.csv"), "id_val")
    assert next(i["id_val_acc"] for i in soup["ingredients"] if i["model"] == lp_entry) == lp_acc
    scores = [i["id_val_acc"] for i in soup["ingredients"]]
    assert scores == sorted(scores, reverse=True) and soup["ingredients"][0]["kept"]
    metrics = pd.read_csv(work / RUN / "soup/seed0/metrics.csv", keep_default_na=False)
    assert set(metrics.loc[metrics["method"] == "uniform_soup", "hp"]) == {"3of3"}

    # the ingredient is the LP model itself: its ID-val accuracy as a network is the probe's
    from pipeline.stages.soup import lp_state

    data = PreparedDataset(work / "data/prepared/digits")
    model = model_from_config(cfg["models"]["tiny"], data.num_classes, None).eval()
    template = str(work / RUN / "ft/model_1/seed0/model.safetensors")
    model.load_state_dict(lp_state(str(work / "data/weights/tiny.safetensors"), str(work / RUN / "lp/head.safetensors"),
                                   template, head_names(model)), strict=True)
    acc = evaluate_model(model, data, eval_transform(model), splits=["id_val"]).value("id_val")
    assert acc == pytest.approx(lp_acc, abs=1e-6)   # metrics.csv keeps 6 digits


def test_wise_ft_fixed_alpha_and_the_oracle_row(ran):
    work, _ = ran
    curve = pd.read_csv(work / RUN / "ft/model_1/seed0/wise_ft.csv", keep_default_na=False)
    assert set(curve["selection"]) == {"grid", "ood_val_oracle"}   # nothing chosen on ID val
    summary = pd.read_csv(work / "results/report/summary.csv")
    kinds = set(summary["kind"])
    assert {"wise_ft_fixed", "wise_ft_optimal"} <= kinds and "wise_ft" not in kinds
    wise = (work / "paper/tables/wise_ft.tex").read_text()
    assert r"FT from LP + WiSE-FT, $\alpha$ 0.5 &" in wise
    assert r"FT from LP + WiSE-FT, optimal $\alpha$ per column (oracle) &" in wise
    assert "the WiSE-FT paper's optimal alpha; not a valid selection rule" in \
        (work / "paper/tables/results.tex").read_text().replace("$\\alpha$", "alpha")


def test_run_settings_are_what_the_recipe_card_resolves(ran):
    """The card's resolver is the finetune stage's own resolution: run.json's settings, key by key."""
    from pipeline.config.recipe import RecipeRow, resolve

    work, cfg = ran
    for hp in ("model_1", "model_2"):
        used = json.loads((work / RUN / "ft" / hp / "seed0/run.json").read_text())["settings"]
        for key, value in used.items():
            assert resolve(cfg, RecipeRow(f"methods.ft.{key}", None, "x", "digits", hp)) == value, (hp, key)


def test_the_recipe_card_is_in_the_report_and_the_paper(ran):
    import shutil

    work, _ = ran
    card = json.loads((work / "results/report/recipe.json").read_text())
    assert [r["status"] for r in card["rows"]] == ["same", "same", "same", "same", "kept", "differs"]
    assert card["rows"][4]["ours"] == 0.1 and card["rows"][1]["ours"] == [1e-3, 3e-4]
    tex = (work / "paper/tables/recipe.tex").read_text()
    assert r"\begin{longtable}" in tex and "A paper (2099)" in tex and "4 same, 1 differences kept" in tex
    assert r"\textbf{1 unexplained differences}" in tex and r"\textbf{DIFFERS, unexplained}" in tex
    assert r"\emph{kept:} a tiny task needs a larger decay" in tex and r"[0.001, 0.0003]" in tex
    assert r"o/\allowbreak{}r@\allowbreak{}abc1234:\allowbreak{}x.\allowbreak{}py:\allowbreak{}1" in tex
    html = (work / "results/report/tables/recipe.html").read_text()
    assert '<tr class="differs">' in html and "a tiny task needs a larger decay" in html
    assert (work / "paper/tables/tables.tex").read_text().splitlines()[-1] == r"\input{tables/recipe}"
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed")
    import os

    from pipeline.stages import paper

    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert paper.main([]) == 0
    finally:
        os.chdir(cwd)
    assert (work / "paper/main.pdf").read_bytes().startswith(b"%PDF")
