"""The papers' claims checked on the results (pipeline/reporting/claims.py, findings.py).

The verdict rules on constructed intervals; then the demo's methods (test_report's synthetic
results plus freeze-embed) through the real report stage, where the claims come out as the numbers
say: LP-FT beats FT OOD by 10 points (holds, though LP is worse OOD than FT: its condition fails);
freeze-embed has FT (AdamW)'s very predictions and SGD's are 20 points lower (holds, and so does its
condition: AdamW beats SGD, the embedding's gradients are 10 times the rest's); SPD is 5 points below
AdamW ID (does not hold); WiSE-FT's interior alpha is 2 points up on 500 examples (inconclusive).
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import BASE, METHODS, ODD_LABEL, REPO, RUN_HP, SEEDS, WISE, ids, write_inputs, write_run

from pipeline.config import ParamsError, load_params
from pipeline.config.settings import hp_names
from pipeline.evaluation.predictions import SINGLE, PredictionFile, entry_ids, save_predictions
from pipeline.reporting import claims
from pipeline.reporting.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_EVALUATED, verdict
from pipeline.reporting.findings import conclusion

RUNS = Path("results/digits/lite0")


def test_verdict_rules():
    # a > b: the interval of a - b above 0, below 0, or straddling it
    assert [verdict(">", lo, hi) for lo, hi in ((0.1, 2.0), (-2.0, -0.1), (-1.0, 1.0))] == [HOLDS, FAILS, INCONCLUSIVE]
    # a >= b within 1 point: above -1 holds (even when significantly below 0), below -1 does not
    assert [verdict(">=", lo, hi, 1.0) for lo, hi in ((-0.5, 2.0), (-0.9, -0.2), (-3.0, -1.5), (-2.0, 0.5))] == [
        HOLDS, HOLDS, FAILS, INCONCLUSIVE]
    assert verdict(">=", -0.2, 1.0) == INCONCLUSIVE and verdict(">=", 0.1, 1.0) == HOLDS   # no tolerance
    # a ~= b within 1 point: inside (-1, 1), outside it, or across its edge
    assert [verdict("~=", lo, hi, 1.0) for lo, hi in ((-0.5, 0.5), (1.5, 3.0), (-3.0, -1.2), (-0.5, 1.5))] == [
        HOLDS, FAILS, FAILS, INCONCLUSIVE]
    assert verdict(">", math.nan, math.nan) == INCONCLUSIVE
    with pytest.raises(ValueError, match="unknown relation"):
        verdict("<", 0.0, 1.0)
    assert claims.combine([HOLDS, HOLDS]) == HOLDS and claims.combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.combine([INCONCLUSIVE, FAILS, HOLDS]) == FAILS and claims.combine([]) == NOT_EVALUATED


def result(claim_ok: str, condition_ok: str) -> claims.ClaimResult:
    check = lambda v: claims.Check("x", claims.Value("a", 1.0), claims.Value("b", 0.0), verdict=v)  # noqa: E731
    return claims.ClaimResult(claims.CLAIMS[0], "digits", "lite0", checks=[check(claim_ok)],
                              condition_checks=[check(condition_ok)])


def test_what_a_verdict_and_its_condition_say_together():
    assert "outside the scope" in conclusion(result(FAILS, FAILS))
    assert "go against the claim" in conclusion(result(FAILS, HOLDS))
    assert "cannot be told" in conclusion(result(FAILS, INCONCLUSIVE))
    assert "holds on these results" in conclusion(result(HOLDS, FAILS))
    assert "more seeds or test examples" in conclusion(result(INCONCLUSIVE, HOLDS))
    lacking = claims.ClaimResult(claims.CLAIMS[1], "d", "m", missing=["method 'freeze_embed'"])
    assert lacking.verdict == NOT_EVALUATED and "lacks method 'freeze_embed'" in conclusion(lacking)


def test_roles_are_the_schema_keys_and_validated(tmp_path):
    schema = yaml.safe_load((REPO / "pipeline/config/params.schema.yaml").read_text())
    assert set(schema["properties"]["report"]["properties"]["claims"]["properties"]) == set(claims.ROLE_DEFAULTS)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for value, message in (({"adamw": "nope"}, "report.claims.adamw: 'nope' is not in experiment.methods"),
                           ({"adam": "ft_adamw"}, "report.claims.adam")):
        params["report"]["claims"] = value
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(ParamsError, match=message):
            load_params(tmp_path / "p.yaml")
    assert claims.roles({"claims": {"adamw": "adamw"}})["adamw"] == "adamw"
    assert claims.roles({})["sgd"] == "ft_sgd"


def copy_predictions(src: Path, dst: Path, method: str, hp: str, seed: int) -> None:
    """``dst`` gets ``src``'s per-example predictions under another run's ids."""
    save_predictions(dst, {SINGLE: (entry_ids(**ids(method, hp, seed=seed)), PredictionFile(src).all(SINGLE))})


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    from pipeline.stages import report

    root = tmp_path_factory.mktemp("claims")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiment"].update(datasets=["digits"], models=["lite0"], methods=[*METHODS, "freeze_embed"],
                                seeds=list(SEEDS))
    params["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.0]}
    params["wise_ft"]["methods"] = list(WISE)
    params["soups"]["methods"] = ["ft_adamw", "ft_sgd", "spd"]
    params["report"]["labels"]["ft_sgd"] = ODD_LABEL
    params["report"]["bootstrap"] = {"n_resamples": 400}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(REPO / "paper/templates", root / "paper/templates")
    write_inputs(root)
    hp = hp_names(load_params(root / "params.yaml"), "freeze_embed", "digits")[0]
    for seed in SEEDS:   # freeze-embed: FT (AdamW)'s accuracies and its very predictions
        i, m, s = BASE["ft_adamw"]
        run = root / RUNS / "freeze_embed" / hp / f"seed{seed}"
        write_run(run, "freeze_embed", hp, seed, (i + 0.01 * seed, m + 0.02 * seed, s))
        copy_predictions(root / RUNS / f"ft_adamw/{RUN_HP['ft_adamw']}/seed{seed}/predictions.npz",
                         run / "predictions.npz", "freeze_embed", hp, seed)
    # the stem (embedding) has 10 times the rest of the backbone's gradient per parameter; the head is left out
    pd.DataFrame([{"group": g, "index": i, "n_params": 10, "grad_norm": norm, "grad_norm_per_param": norm / 10 ** 0.5,
                   "param_norm": 1.0, "embed": g == "stem", "dataset": "digits", "model": "lite0", "config_hash": "0"}
                  for i, (g, norm) in enumerate([("stem", 10.0), ("blocks.0", 1.0), ("blocks.1", 1.0),
                                                  ("head", 50.0)])]).to_csv(root / RUNS / "grad_norms.csv",
                                                                            index=False)
    cwd = Path.cwd()
    try:
        os.chdir(root)
        assert report.main([]) == 0
    finally:
        os.chdir(cwd)
    return root


def verdicts(table: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    first = table.drop_duplicates(["claim", "instance"])
    return {(r.claim, r.instance if isinstance(r.instance, str) else ""): (r.claim_verdict, r.condition_verdict)
            for r in first.itertuples(index=False)}


def test_claims_through_the_report_stage(checked):
    table = pd.read_csv(checked / "results/report/claims.csv")
    got = verdicts(table)
    assert {k: v[0] for k, v in got.items()} == {
        ("lpft", ""): HOLDS, ("freeze_embed", ""): HOLDS, ("wise_ft", "ft_adamw"): INCONCLUSIVE,
        ("wise_ft", "lpft"): INCONCLUSIVE, ("spd", ""): FAILS}
    assert got[("lpft", "")][1] == got[("spd", "")][1] == FAILS and got[("freeze_embed", "")][1] == HOLDS
    # WiSE-FT's condition: alpha 0 and 1 have the same OOD accuracy here, the verdict is the rule on its interval
    for cond in table[(table["claim"] == "wise_ft") & (table["part"] == "condition")].itertuples(index=False):
        assert cond.delta == pytest.approx(0.0) and cond.delta_low < 0 < cond.delta_high
        assert cond.verdict == verdict(">=", cond.delta_low, cond.delta_high, 5.0) == cond.condition_verdict
    summary = pd.read_csv(checked / "results/report/summary.csv")

    def summary_row(row: str, quantity: str) -> pd.Series:
        return summary[(summary["row"] == row) & (summary["quantity"] == quantity)].iloc[0]

    # the numbers are the report's: LP-FT against FT (AdamW), the baseline, is the table's paired comparison
    lpft = table[(table["claim"] == "lpft") & (table["part"] == "claim")].iloc[0]
    s = summary_row("lpft", "ood_acc")
    assert lpft["a_mean"] == pytest.approx(100 * s["mean"]) and lpft["a_low"] == pytest.approx(100 * s["ci_low"])
    assert (lpft["delta"], lpft["delta_low"], lpft["delta_high"]) == pytest.approx(
        (100 * s["delta"], 100 * s["delta_low"], 100 * s["delta_high"]))
    assert lpft["delta"] == pytest.approx(10.0) and lpft["delta_low"] > 0
    # freeze-embed ~= AdamW: the same predictions, a difference of exactly 0; the gradient ratio is measured
    fe = table[table["claim"] == "freeze_embed"].set_index("check")
    same = fe[fe["relation"] == "~="].iloc[0]
    assert (same["delta"], same["delta_low"], same["delta_high"]) == (0.0, 0.0, 0.0)
    ratio = fe[fe["b"].isna()].iloc[0]
    assert ratio["a_mean"] == pytest.approx(10.0) and ratio["part"] == "condition" and ratio["verdict"] == HOLDS
    # WiSE-FT: the interior alpha is chosen on OOD val (all tie here: the smaller, 0.25), tested on OOD test
    wise = table[(table["claim"] == "wise_ft") & (table["instance"] == "ft_adamw") & (table["part"] == "claim")]
    assert list(wise["a"]) == ["FT (AdamW), alpha 0.25"] * 2
    assert list(wise["b"]) == ["FT (AdamW), alpha 0 (pretrained end)", "FT (AdamW), alpha 1 (fine-tuned end)"]
    assert wise["delta"].tolist() == pytest.approx([1.875, 1.875])
    spd = table[(table["claim"] == "spd") & (table["part"] == "claim")].set_index("check")
    assert spd.iloc[0]["delta"] == pytest.approx(-5.0) and spd.iloc[0]["verdict"] == FAILS


def test_the_claims_section_is_written_from_the_results(checked):
    tex = (checked / "paper/tables/claims.tex").read_text()
    assert r"\section*{What the results show}" in tex and r"\label{sec:claims}" in tex
    assert "Of the 5 claims checked, 2 hold, 1 does not hold and 2 are inconclusive." in tex.replace("\n", " ")
    # LP-FT's numbers as in the table, and its condition measured (LP 50.0 against FT 61.0 OOD)
    assert "LP-FT 71.0 [" in tex and "FT (AdamW) 61.0 [" in tex and "+10.0 [" in tex
    assert "LP 50.0 [" in tex and "-11.0 [" in tex
    assert r"$\alpha$ 0.25" in tex and "interior $\\alpha$ best on OOD validation" in tex
    assert "\\%" in tex and "co\\_x" in tex and "%%" not in tex and "\\VAR" not in tex
    html = (checked / "results/report/tables/claims.html").read_text()
    assert "What the results show" in html and "LP-FT 71.0 [" in html and "\u03b1 0.25" in html
    assert 'class="does-not-hold"' in html and 'class="holds"' in html
