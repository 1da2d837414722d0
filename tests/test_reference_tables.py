"""The published numbers shipped in paper/reference agree with the tables that show them.

configs/freeze_embed.yaml (every dataset, model and method of the paper's table, one grid point)
is reported on fabricated results; every value of paper/reference/freeze_embed.yaml must then
appear in the freeze-embed table, under its method, in its dataset's ID or OOD column (or the
average), with ours minus it.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline.config import load_params
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predictions import SplitPredictions, entry_ids, save_predictions
from pipeline.reporting.aggregate import headline
from pipeline.reporting.cells import Cell, cell_tex
from pipeline.reporting.reference import AVERAGE, load_reference
from pipeline.stages import report
from pipeline.stages.registry import STAGES_BY_NAME

N = 50   # examples per domain
OOD_DOMAINS = {"living17": ["target"], "waterbirds": ["landbird_land", "landbird_water", "waterbird_land",
                                                      "waterbird_water"],
               "domainnet": ["real"], "fmow": ["Africa", "Americas", "Asia"], "camelyon17": ["hospital_2"]}


def split(rng: np.random.Generator, domains: list[str]) -> SplitPredictions:
    ok = np.concatenate([rng.permutation(N) < rng.integers(10, N) for _ in domains])
    names = np.repeat(domains, N)
    return SplitPredictions((~ok).astype(np.int32), np.full(len(ok), 0.8, np.float32), ok, names)


def rows(name: str, p: SplitPredictions, dataset: str) -> list[dict]:
    out = [{"split": name, "domain": "all", "metric": "acc", "value": float(p.correct.mean()), "n": len(p)}]
    accs = {d: float(p.correct[p.domains == d].mean()) for d in dict.fromkeys(p.domains)}
    out += [{"split": name, "domain": d, "metric": "acc", "value": v, "n": N} for d, v in accs.items()]
    if dataset == "waterbirds":   # the official WILDS metrics its headline quantities use
        metric, value = ("adj_acc_avg", float(np.mean(list(accs.values())))) if name == "id_test" else \
            ("acc_wg", min(accs.values()))
        out.append({"split": name, "domain": "all", "metric": metric, "value": value, "n": len(p)})
    return out


def write_job(path_metrics: str, path_predictions: str, ids: dict) -> None:
    rng = np.random.default_rng(zlib.crc32(path_metrics.encode()))
    preds = {"id_test": split(rng, ["id"]), "ood_test": split(rng, OOD_DOMAINS[ids["dataset"]])}
    all_rows = [r for name, p in preds.items() for r in rows(name, p, ids["dataset"])]
    # grid points and checkpoints are chosen on ID val: its score (one grid point here) only has to exist
    all_rows.append({"split": "id_val", "domain": "all", "metric": "acc", "value": 0.5, "n": N})
    Path(path_metrics).parent.mkdir(parents=True, exist_ok=True)
    tidy(all_rows, **ids, config_hash="0").to_csv(path_metrics, index=False)
    save_predictions(path_predictions, {"model": (ids, preds)})


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    # the recipe card has its own test (tests/test_recipes.py)
    cfg = yaml.safe_load((REPO / "configs/freeze_embed.yaml").read_text())
    cfg["report"].pop("recipe")
    cfg["report"]["tables"].remove("recipe")
    for m in cfg["methods"].values():   # one grid point per method: the test is about the layout
        m["lr"] = m.pop("grid")["lr"][0]
    cfg["experiment"]["seeds"] = [0, 1]
    cfg["report"]["bootstrap"] = {"n_resamples": 200}
    tmp_path = tmp_path_factory.mktemp("freeze_embed")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield fabricate_and_report(tmp_path, cfg)
    finally:
        os.chdir(cwd)


def fabricate_and_report(tmp_path: Path, cfg: dict) -> dict:
    (tmp_path / "paper").mkdir()
    for name in ("templates", "reference"):
        (tmp_path / "paper" / name).symlink_to(REPO / "paper" / name)
    Path("params.yaml").write_text(yaml.safe_dump(cfg))
    cfg = load_params("params.yaml")
    for j in STAGES_BY_NAME["linear_probe"].jobs(cfg):
        out = STAGES_BY_NAME["linear_probe"].output_paths(j)
        write_job(out["metrics"], out["predictions"], entry_ids(j["dataset"], j["model"], "lp", "C1", 0))
    for j in STAGES_BY_NAME["evaluate"].jobs(cfg):
        out = STAGES_BY_NAME["evaluate"].output_paths(j)
        write_job(out["metrics"], out["predictions"], entry_ids(j["dataset"], j["model"], j["method"], j["hp"],
                                                                int(j["seed"])))
        run = Path(out["metrics"]).parent
        (run / "run.json").write_text(json.dumps({**j, "seed": int(j["seed"]), "settings": {"optimizer": "sgd"}}))
        pd.DataFrame([{"param": "w", "group": "stem", "numel": 1, "frozen": False, "init_norm": 1.0,
                       "delta_norm": 0.1, "spd_projected": np.nan, **j}]).to_csv(run / "layers.csv", index=False)
    for j in STAGES_BY_NAME["grad_norms"].jobs(cfg):
        pd.DataFrame([{"group": "stem", "index": 0, "n_params": 1, "grad_norm": 1.0, "grad_norm_per_param": 1.0,
                       "param_norm": 1.0, "embed": True, **j}]).to_csv(
            STAGES_BY_NAME["grad_norms"].output_paths(j)["grad_norms"], index=False)
    assert report.main([]) == 0
    return cfg | {"root": tmp_path}


def published_rows(tex: str, labels: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """{(model, method): cells of the published row under the method's row} of the freeze-embed table."""
    out, model, lines = {}, None, tex.splitlines()
    by_label = {v: k for k, v in labels.items()}
    for i, line in enumerate(lines):
        if line.startswith(r"\textbf{"):
            model = line[len(r"\textbf{"):line.index("}")].replace(r"\_", "_")
        label = line.split(" & ")[0]
        if label in by_label and i + 1 < len(lines) and lines[i + 1].startswith(r"\quad"):
            out[(model, by_label[label])] = [c.strip().removesuffix(r"\\").strip()
                                              for c in lines[i + 1].split(" & ")[1:]]
    return out


def test_every_published_value_is_in_the_table_beside_ours(reported):
    cfg = reported
    reference = load_reference([str(REPO / p) for p in cfg["report"]["reference"]])
    summary = pd.read_csv(cfg["root"] / "results/report/summary.csv")
    summary = summary.set_index(["dataset", "model", "row", "quantity"])["mean"]
    tex = (cfg["root"] / "paper/tables/freeze_embed.tex").read_text()
    table = published_rows(tex, cfg["report"]["labels"])
    datasets = cfg["experiment"]["datasets"]
    columns = [(d, side) for d in datasets for side in ("id", "ood")] + [(AVERAGE, "id"), (AVERAGE, "ood")]
    assert len(reference) == 7 * 3 * 6 * 2 + 12
    for (dataset, model, method, side, _quantity, _point), pub in reference.items():
        cells = table[(model, method)]
        if dataset == AVERAGE:
            ours = np.mean([summary[(d, model, method, headline(cfg["report"], d, side))] for d in datasets])
        else:
            ours = summary[(dataset, model, method, headline(cfg["report"], dataset, side))]
        expected = cell_tex(Cell("published", value=pub.value, delta=100 * ours - pub.value))
        assert cells[columns.index((dataset, side))] == expected, (dataset, model, method, side)
        assert expected.startswith(f"{pub.value:.1f}")
    # methods the reference lacks get no published row; cells it lacks are left empty
    assert (("clip_vit_l14", "sgd_no_momentum") not in table) and len(table) == 7 * 3 + 1
    assert "published: Kumar et al. 2024" in tex and r"\textbf{Average over 7 models}" in tex


def test_the_paper_layout_uses_the_papers_columns(reported):
    tex = (reported["root"] / "paper/tables/freeze_embed.tex").read_text()
    # Waterbirds: group-weighted ID and worst-group OOD; FMoW: the Africa region (paper/reference notes)
    assert r"\texttt{waterbirds} id\_adj\_acc\_avg/ood\_acc\_wg;" in tex
    assert tex.index(r"\textbf{clip\_vit\_b16}") < tex.index(r"\textbf{convnext\_b}")   # the config's order
    assert r"\texttt{fmow} id\_acc/ood\_acc/Africa;" in tex
    tables = (reported["root"] / "paper/tables/tables.tex").read_text().splitlines()
    assert tables[1:] == [r"\input{tables/freeze_embed}", r"\input{tables/results}"]
