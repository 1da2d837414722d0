"""The report on a dataset without OOD splits (the transfer targets of Li et al. 2020).

The synthetic project of tests/test_report.py, with every metric row and prediction of the OOD
splits removed: the report must still run end to end, with ID quantities, intervals and baseline
comparisons, and empty OOD cells (no OOD quantity; the effective-robustness fit has no points).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_report as base

from pipeline.evaluation.predictions import SplitPredictions


def id_rows(id_acc: float, mnist_m: float, sklearn: float, id_val: float = 0.01, ood_val: float = 0.03
            ) -> list[dict]:
    return [{"split": "id_val", "domain": "all", "value": id_val, "n": base.N_ID},
            {"split": "id_test", "domain": "all", "value": id_acc, "n": base.N_ID},
            {"split": "id_test", "domain": "digits", "value": id_acc, "n": base.N_ID}]


def id_predictions(id_acc: float, mnist_m: float, sklearn: float, rng: np.random.Generator) -> dict:
    ok = base.correct(id_acc, base.N_ID, rng)
    return {"id_test": SplitPredictions((~ok).astype(np.int32), np.full(base.N_ID, 0.75, np.float32), ok,
                                        np.full(base.N_ID, "digits"))}


@pytest.fixture
def reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from pipeline.stages import report

    monkeypatch.setattr(base, "split_rows", id_rows)
    monkeypatch.setattr(base, "split_predictions", id_predictions)
    _project(tmp_path, monkeypatch)
    metrics = list(tmp_path.glob("results/**/metrics.csv"))
    assert metrics and not any(pd.read_csv(p)["split"].str.startswith("ood").any() for p in metrics)
    assert report.main([]) == 0
    return tmp_path


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/test_report.py's ``project`` fixture: its params, templates and synthetic results (ID only here)."""
    import shutil

    import yaml

    params = yaml.safe_load((base.REPO / "params.yaml").read_text())
    params["experiment"].update(datasets=["digits"], models=["lite0"], methods=base.METHODS, seeds=list(base.SEEDS))
    params["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.0]}
    params["wise_ft"]["methods"] = list(base.WISE)
    params["soups"]["methods"] = ["ft_adamw", "ft_sgd", "spd"]
    params["report"]["labels"]["ft_sgd"] = base.ODD_LABEL
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(base.REPO / "paper/templates", tmp_path / "paper/templates")
    shutil.copy(base.REPO / "paper/main.tex", tmp_path / "paper/main.tex")
    base.write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)


def test_report_runs_with_id_quantities_only(reported: Path) -> None:
    summary = pd.read_csv(reported / "results/report/summary.csv")
    assert set(summary["quantity"]) <= {"id_acc", "alpha"} and (summary["quantity"] == "id_acc").any()
    fit = pd.read_csv(reported / "results/report/effective_robustness.csv")
    assert fit["n_points"].tolist() == [0] and fit["slope"].isna().all()   # no OOD points, no fit
    ft = summary[(summary["row"] == "ft_adamw") & (summary["quantity"] == "id_acc")].iloc[0]
    assert ft["mean"] == pytest.approx(np.mean([0.90, 0.91, 0.92])) and ft["ci_low"] < ft["mean"] < ft["ci_high"]
    # ID comparisons with the baseline (params.yaml's report.baseline) are still made; OOD ones are not.
    compared = summary[summary["delta"].notna()]
    assert len(compared) and set(compared["quantity"]) == {"id_acc"}


def test_tables_show_id_cells_and_empty_ood_cells(reported: Path) -> None:
    tex = (reported / "paper/tables/results.tex").read_text()
    row = base.table_row(tex, "FT (AdamW)")
    assert row[-2].startswith("91.0") and row[-1] == "--"
    for layout in ("freeze_embed", "lpft", "wise_ft"):
        assert (reported / f"paper/tables/{layout}.tex").read_text().strip()
    # no OOD data: every claim is about OOD accuracy, so none is evaluated, and the section says what is lacking
    claims = pd.read_csv(reported / "results/report/claims.csv")
    assert set(claims["claim_verdict"]) == {"not evaluated"} and claims["check"].str.contains("OOD accuracy").all()
    assert "Not evaluated: the experiment lacks OOD accuracy of" in (reported / "paper/tables/claims.tex").read_text()
