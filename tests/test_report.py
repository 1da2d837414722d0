"""Stages ``report`` and ``paper`` on synthetic tidy metrics: LP, 3 methods x 3 seeds, a swept
method (SPD, 2 grid points), soups, WiSE-FT, per-layer tables and gradient norms."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.evaluation.metrics import COLUMNS
from pipeline.reporting import aggregate, costs, paper, report
from pipeline.reporting.tables import format_cell, latex_escape

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
# method: (ID test acc, mnist_m acc, sklearn_digits acc) at seed 0; ID +1 and mnist_m +2 points per seed.
BASE = {"ft_adamw": (0.90, 0.50, 0.70), "ft_sgd": (0.80, 0.30, 0.50), "lpft": (0.94, 0.60, 0.80)}
# SPD's two grid points: ID val prefers lambda 1 (0.95 vs 0.90), OOD val prefers 0.3 (0.70 vs 0.60).
SPD = {"spd_lambda0.3": dict(test=(0.70, 0.20, 0.40), id_val=0.90, ood_val=0.70),
       "spd_lambda1": dict(test=(0.85, 0.45, 0.65), id_val=0.95, ood_val=0.60)}
SOUPS = {"uniform_soup": (0.60, 0.20, 0.30), "greedy_soup": (0.92, 0.55, 0.75)}
WISE = ("ft_adamw", "lpft")
LP = (0.85, 0.40, 0.60)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
ID_VAL_ALPHA = {"ft_adamw": (0.5, 0.5, 0.75), "lpft": (0.5, 0.5, 0.5)}
ORACLE_ALPHA = 0.25
ODD_LABEL = "50% & co_x"
N_DOMAIN = {"mnist_m": 300, "sklearn_digits": 100}
METHODS = [*BASE, "spd"]


def split_rows(id_acc: float, mnist_m: float, sklearn: float, id_val: float = 0.01, ood_val: float = 0.03
               ) -> list[dict]:
    """Rows of every split; the n-weighted OOD 'all' rows are decoys the report must not use."""
    all_ood = (N_DOMAIN["mnist_m"] * mnist_m + N_DOMAIN["sklearn_digits"] * sklearn) / 400
    rows = [{"split": "id_val", "domain": "all", "value": id_val, "n": 500},
            {"split": "id_test", "domain": "all", "value": id_acc, "n": 500},
            {"split": "ood_val", "domain": "all", "value": 0.02, "n": 400},
            {"split": "ood_test", "domain": "all", "value": all_ood, "n": 400}]
    for split in ("ood_val", "ood_test"):
        for d, v in (("mnist_m", mnist_m), ("sklearn_digits", sklearn)):
            rows.append({"split": split, "domain": d, "value": v if split == "ood_test" else ood_val,
                         "n": N_DOMAIN[d]})
    return rows


def frame(rows: list[dict], **ids) -> pd.DataFrame:
    df = pd.DataFrame([{"dataset": "digits", "model": "lite0", "hp": "default", "seed": 0, "alpha": np.nan,
                        "selection": "", "metric": "acc", "config_hash": "0123", **ids, **r} for r in rows])
    return df[COLUMNS]


def wise_values(method: str, alpha: float, seed: int) -> tuple[float, float, float]:
    i, m, s = BASE[method]
    return i - 0.1 * (1 - alpha) + 0.01 * seed, m + 0.2 * alpha * (1 - alpha) + 0.02 * seed, s


def write_run(d: Path, method: str, hp: str, seed: int, rows: list[dict]) -> None:
    d.mkdir(parents=True)
    frame(rows, method=method, hp=hp, seed=seed).to_csv(d / "metrics.csv", index=False)
    sgd = method == "ft_sgd"
    settings = {"optimizer": "sgd" if sgd else ("spd" if method == "spd" else "adamw"),
                "lr": 0.01 if sgd else 3e-4}
    run = {"dataset": "digits", "model": "lite0", "method": method, "hp": hp, "seed": seed, "config_hash": "0123",
           "settings": settings, "lr": settings["lr"], "effective_lr": 0.1 if sgd else None,
           "frozen_fraction": 0.0, "selected_epoch": 3}
    (d / "run.json").write_text(json.dumps(run))
    # what the run cost: seed s trained (s+1)/10 h on one GPU at 100 (s+1) img/s, peak (s+1) GiB
    cost = {"dataset": "digits", "model": "lite0", "method": method, "hp": hp, "seed": seed, "config_hash": "0123",
            "device": "cuda:0", "gpus": 1, "images_per_s": 100.0 * (seed + 1), "train_seconds": 360.0 * (seed + 1),
            "gpu_hours": 0.1 * (seed + 1), "peak_memory_bytes": (seed + 1) * 2**30}
    (d / "cost.json").write_text(json.dumps(cost))
    # two layer groups; SPD projects more in the first one
    spd = method == "spd"
    pd.DataFrame([{"param": "stem.w", "group": "stem", "numel": 10, "frozen": False, "init_norm": 2.0,
                   "delta_norm": 0.1 * (seed + 1), "spd_projected": 0.5 if spd else math.nan},
                  {"param": "head.w", "group": "head", "numel": 30, "frozen": False, "init_norm": 1.0,
                   "delta_norm": 1.0, "spd_projected": 0.1 if spd else math.nan}]).assign(
        dataset="digits", model="lite0", method=method, hp=hp, seed=seed, config_hash="0123").to_csv(
        d / "layers.csv", index=False)


def write_inputs(root: Path) -> None:
    run_root = root / "results/digits/lite0"
    (run_root / "lp").mkdir(parents=True)
    frame(split_rows(*LP), method="lp", hp="C0.1").to_csv(run_root / "lp/metrics.csv", index=False)
    pd.DataFrame([{"group": g, "index": i, "n_params": 10, "grad_norm": 1.0 / (i + 1), "grad_norm_per_param": 0.1,
                   "param_norm": 1.0, "embed": i < 2, "dataset": "digits", "model": "lite0", "config_hash": "0"}
                  for i, g in enumerate(["stem", "blocks.0", "head"])]).to_csv(run_root / "grad_norms.csv",
                                                                                  index=False)
    for seed in SEEDS:
        for method, (i, m, s) in BASE.items():
            d = run_root / method / "default" / f"seed{seed}"
            write_run(d, method, "default", seed, split_rows(i + 0.01 * seed, m + 0.02 * seed, s))
            if method not in WISE:
                continue
            grid = {a: split_rows(*wise_values(method, a, seed)) for a in ALPHAS}
            parts = [frame(rows, method=method, seed=seed, alpha=a, selection="grid") for a, rows in grid.items()]
            chosen = ID_VAL_ALPHA[method][seed]
            parts.append(frame(grid[chosen], method=method, seed=seed, alpha=chosen, selection="id_val"))
            parts.append(frame(grid[ORACLE_ALPHA], method=method, seed=seed, alpha=ORACLE_ALPHA,
                               selection="ood_val_oracle"))
            pd.concat(parts).to_csv(d / "wise_ft.csv", index=False)
        for hp, v in SPD.items():
            i, m, s = v["test"]
            write_run(run_root / "spd" / hp / f"seed{seed}", "spd", hp, seed,
                      split_rows(i + 0.01 * seed, m, s, id_val=v["id_val"], ood_val=v["ood_val"]))
        soup_dir = run_root / "soup" / f"seed{seed}"
        soup_dir.mkdir(parents=True)
        pd.concat([frame(split_rows(*v), method=name, hp="2of5", seed=seed) for name, v in SOUPS.items()]).to_csv(
            soup_dir / "metrics.csv", index=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiment"].update(datasets=["digits"], models=["lite0"], methods=METHODS, seeds=list(SEEDS))
    params["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.0]}
    params["wise_ft"]["methods"] = list(WISE)
    params["soups"]["methods"] = ["ft_adamw", "ft_sgd", "spd"]
    params["analysis"]["lpft_theory"] = {"eps": [0.0, 0.2], "seeds": 2}
    params["report"]["labels"]["ft_sgd"] = ODD_LABEL
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(REPO / "paper/templates", tmp_path / "paper/templates")
    shutil.copy(REPO / "paper/main.tex", tmp_path / "paper/main.tex")
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def reported(project: Path) -> Path:
    from pipeline.analysis import lpft_theory

    assert report.main([]) == 0
    assert lpft_theory.main([]) == 0   # the paper's other tables
    assert costs.main([]) == 0
    return project


def stat(summary: pd.DataFrame, row: str, quantity: str) -> tuple[float, float, int]:
    hit = summary[(summary["row"] == row) & (summary["quantity"] == quantity)]
    assert len(hit) == 1, (row, quantity)
    return float(hit["mean"].iloc[0]), float(hit["std"].iloc[0]), int(hit["n"].iloc[0])


def test_summary_matches_hand_computed(reported: Path) -> None:
    results = aggregate.read_tidy(["results/report/results.csv"])
    cfg = yaml.safe_load(Path("params.yaml").read_text())["report"]
    summary = aggregate.summarise(results, cfg, METHODS)
    # ft_adamw ID: 90, 91, 92; OOD = mean of domains (mnist_m 50/52/54, sklearn 70) = 60, 61, 62.
    assert stat(summary, "ft_adamw", "id_acc") == pytest.approx((0.91, 0.01, 3))
    assert stat(summary, "ft_adamw", "ood_acc") == pytest.approx((0.61, 0.01, 3))
    assert stat(summary, "ft_adamw", "ood_acc/mnist_m") == pytest.approx((0.52, 0.02, 3))
    assert stat(summary, "ft_sgd", "ood_acc") == pytest.approx((0.41, 0.01, 3))
    mean, std, n = stat(summary, "lp", "ood_acc")
    assert (mean, n) == (pytest.approx(0.50), 1) and math.isnan(std)
    # WiSE-FT (ID val): alphas 0.5, 0.5, 0.75 -> ID 0.85, 0.86, 0.895.
    ids = [0.90 - 0.1 * (1 - a) + 0.01 * s for s, a in zip(SEEDS, ID_VAL_ALPHA["ft_adamw"])]
    assert ids == pytest.approx([0.85, 0.86, 0.895])
    assert stat(summary, "ft_adamw/wise_ft", "id_acc") == pytest.approx((np.mean(ids), np.std(ids, ddof=1), 3))
    assert stat(summary, "ft_adamw/wise_ft", "alpha")[0] == pytest.approx(7 / 12)
    # lpft oracle (alpha 0.25): OOD = (0.6 + 0.0375 + 0.02 s + 0.8) / 2 = 0.71875 + 0.01 s.
    assert stat(summary, "lpft/wise_ft_oracle", "ood_acc") == pytest.approx((0.72875, 0.01, 3))
    assert list(dict.fromkeys(summary["row"])) == [
        "lp", "ft_adamw", "ft_sgd", "lpft", "spd", "uniform_soup", "greedy_soup", "ft_adamw/wise_ft",
        "lpft/wise_ft", "spd/oracle_hp", "ft_adamw/wise_ft_oracle", "lpft/wise_ft_oracle"]
    # SPD: grid point chosen on ID val (lambda 1: ID 85, 86, 87); the oracle row uses OOD val's (lambda 0.3).
    assert stat(summary, "spd", "id_acc") == pytest.approx((0.86, 0.01, 3))
    assert stat(summary, "spd/oracle_hp", "id_acc") == pytest.approx((0.71, 0.01, 3))
    assert set(summary.loc[summary["row"] == "spd", "hp"]) == {"spd_lambda1"}
    assert stat(summary, "greedy_soup", "ood_acc") == pytest.approx((0.65, 0.0, 3))


def test_grid_point_selection_ties_go_to_the_earlier_point() -> None:
    rows = []
    for hp, idv in (("lr1", 0.8), ("lr2", 0.8), ("lr3", 0.7)):
        rows += frame(split_rows(0.5, 0.5, 0.5, id_val=idv), method="m", hp=hp).to_dict("records")
    chosen = aggregate.select_grid_points(pd.DataFrame(rows), {})
    assert chosen.set_index("method").loc["m", ["id_hp", "n_points"]].tolist() == ["lr1", 3]


def test_curves_average_seeds_per_alpha(reported: Path) -> None:
    results = aggregate.read_tidy(["results/report/results.csv"])
    curves = aggregate.wise_ft_curves(results, {"id_split": "id_test", "ood_split": "ood_test"})
    c = curves[(curves["method"] == "ft_adamw") & (curves["quantity"] == "id_acc")].set_index("alpha")
    assert list(c.index) == list(ALPHAS)
    assert c.loc[0.0, "mean"] == pytest.approx(0.80 + 0.01) and c.loc[1.0, "mean"] == pytest.approx(0.91)
    assert (c["n"] == 3).all()


def test_results_csv_is_sorted_and_rewritten(reported: Path) -> None:
    inputs = [p for p in Path("results/digits").rglob("*.csv") if p.name in ("metrics.csv", "wise_ft.csv")]
    expected = sum(len(pd.read_csv(p)) for p in inputs)
    assert report.main([]) == 0  # a second run must rewrite, not append
    results = pd.read_csv("results/report/results.csv")
    assert list(results.columns) == COLUMNS and len(results) == expected
    order = results.sort_values(aggregate.SORT_COLUMNS, kind="stable", na_position="first").index
    assert list(order) == list(range(len(results)))


def test_metrics_json_is_hierarchical(reported: Path) -> None:
    tree = json.loads(Path("results/report/metrics.json").read_text())
    assert list(tree) == ["digits"] and list(tree["digits"]) == ["lite0"]
    rows = tree["digits"]["lite0"]
    assert set(rows) == {"lp", *METHODS, *SOUPS, *(f"{m}/wise_ft" for m in WISE),
                         *(f"{m}/wise_ft_oracle" for m in WISE), "spd/oracle_hp"}
    assert rows["ft_adamw"] == {"id_acc": pytest.approx(0.91), "ood_acc": pytest.approx(0.61)}
    assert rows["lp"]["id_acc"] == pytest.approx(0.85)


def test_table_is_escaped_booktabs(reported: Path) -> None:
    tex = Path("paper/tables/results.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:results}", r"\cmidrule(lr){4-6}",
                  r"\sbox0{\begin{tabular}{lcrrrr}", "sklearn\\_digits", "FT (AdamW) + WiSE-FT, alpha on OOD val",
                  "SPD, grid point on OOD val", "Greedy soup",
                  r"grid point \texttt{spd\_lambda1} chosen on ID val of 2"):
        assert token in tex, token
    assert "selected on OOD val" in tex and "selected on ID val" in tex and r"std over 3 seeds" in tex
    assert r"50\% \& co\_x" in tex and ODD_LABEL not in tex
    assert r"FT (AdamW) & -- & 91.0 $\pm$ 1.0 & 61.0 $\pm$ 1.0 & 52.0 $\pm$ 2.0 & 70.0 $\pm$ 0.0 \\" in tex
    assert r"LP & -- & 85.0 & 50.0 & 40.0 & 60.0 \\" in tex  # one seed: no std
    assert r"FT (AdamW) + WiSE-FT & 0.58 &" in tex
    assert r"lr 0.01 (effective 0.1)" in tex and "lr 3e-4;" in tex
    assert "\\VAR" not in tex and "%%" not in tex


def test_latex_escape_and_cells() -> None:
    assert latex_escape(r"a_b%c&d#e$f{g}~^\ ") == (r"a\_b\%c\&d\#e\$f\{g\}\textasciitilde{}"
                                                  r"\textasciicircum{}\textbackslash{} ")
    assert format_cell(0.91234, 0.01, 3) == r"91.2 $\pm$ 1.0"
    assert format_cell(0.5, math.nan, 1) == "50.0"
    assert format_cell(math.nan, math.nan, 0) == "--"


def test_metric_without_domain_rows_uses_whole_split() -> None:
    rows = [{"split": "id_test", "domain": "all", "metric": "worst_group", "value": 0.7},
            {"split": "ood_test", "domain": "all", "metric": "worst_group", "value": 0.4},
            {"split": "ood_test", "domain": "all", "metric": "acc", "value": 0.9},
            {"split": "ood_test", "domain": "a", "metric": "acc", "value": 0.5},
            {"split": "ood_test", "domain": "b", "metric": "acc", "value": 0.7}]
    df = pd.DataFrame(rows).assign(row="x")
    got = aggregate.per_seed_scores(df, ["row"], "id_test", "ood_test").set_index("quantity")["value"]
    assert got.to_dict() == pytest.approx({"id_worst_group": 0.7, "ood_worst_group": 0.4, "ood_acc": 0.6,
                                           "ood_acc/a": 0.5, "ood_acc/b": 0.7})


def test_figures_written_and_reproducible(reported: Path) -> None:
    pdf, png = Path("paper/figures/id_vs_ood.pdf"), Path("paper/figures/id_vs_ood.png")
    first = pdf.read_bytes(), png.read_bytes()
    assert first[0].startswith(b"%PDF") and first[1].startswith(b"\x89PNG") and len(first[1]) > 10_000
    assert b"CreationDate" not in first[0]
    extra = [Path("paper/figures/grad_norms.pdf"), Path("paper/figures/layers.pdf")]
    extra_bytes = [e.read_bytes() for e in extra]
    assert all(b.startswith(b"%PDF") for b in extra_bytes)
    assert report.main([]) == 0
    assert (pdf.read_bytes(), png.read_bytes()) == first
    assert [e.read_bytes() for e in extra] == extra_bytes
    assert not list(Path("paper/figures").glob(".tmp-*"))


def test_layer_summary_uses_chosen_grid_point(reported: Path) -> None:
    from pipeline.reporting.layer_figures import layer_summary, read_layers

    results = aggregate.read_tidy(["results/report/results.csv"])
    chosen = aggregate.select_grid_points(results, {})
    layers = read_layers([str(p) for p in Path("results/digits").rglob("layers.csv")])
    got = layer_summary(layers, chosen).set_index(["method", "group"])
    # stem: ||delta|| = 0.1, 0.2, 0.3 over ||theta_0|| = 2 -> 0.05, 0.1, 0.15 -> mean 0.1
    assert got.loc[("ft_adamw", "stem"), "rel_change"] == pytest.approx(0.1)
    assert got.loc[("spd", "stem"), "spd_projected"] == pytest.approx(0.5)
    assert got.loc[("spd", "head"), "spd_projected"] == pytest.approx(0.1)
    assert math.isnan(got.loc[("ft_adamw", "head"), "spd_projected"])
    assert got.loc[("spd", "stem"), "group_index"] == 0 and got.loc[("spd", "head"), "group_index"] == 1
    assert len(got.loc["spd"]) == 2   # one grid point only (the chosen one), not both


def test_cost_table_sums_gpu_hours_and_takes_peaks(reported: Path) -> None:
    rows = pd.read_csv("results/report/costs.csv")
    assert len(rows) == len(SEEDS) * (len(BASE) + len(SPD))   # one row per run
    table = Path("paper/tables/costs.tex").read_text()
    line = next(ln for ln in table.splitlines() if ln.startswith("digits & lite0 & FT (AdamW)"))
    runs, gpu_hours, train_hours, rate, peak = [c.strip(" \\") for c in line.split("&")[3:]]
    assert (runs, gpu_hours, train_hours, rate, peak) == ("3", "0.600", "0.600", "200", "3072")
    spd = next(ln for ln in table.splitlines() if ln.startswith("digits & lite0 & SPD"))
    assert spd.split("&")[3].strip() == str(len(SEEDS) * len(SPD))   # every grid point's runs count
    assert r"\label{tab:costs}" in table and "cuda:0" in table


def test_paper_builds_pdf(reported: Path) -> None:
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed")
    assert paper.main([]) == 0
    pdf = Path("paper/main.pdf")
    first = pdf.read_bytes()
    assert first.startswith(b"%PDF") and len(first) > 10_000
    assert paper.main([]) == 0 and pdf.read_bytes() == first  # reproducible bytes
    assert not list(Path("paper").glob("*.aux")) and not list(Path("paper").glob("*.log"))


def test_paper_failure_reports_log_tail(reported: Path, capsys: pytest.CaptureFixture) -> None:
    if shutil.which("latexmk") is None:
        pytest.skip("latexmk not installed")
    main_tex = Path("paper/main.tex")
    main_tex.write_text(main_tex.read_text().replace(r"\maketitle", r"\maketitle\undefinedmacroxyz"))
    assert paper.main([]) != 0
    err = capsys.readouterr().err
    assert "latexmk failed" in err and "Undefined control sequence" in err
    assert not Path("paper/main.pdf").exists()


def test_paper_without_latexmk(reported: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    empty = reported / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert paper.main([]) != 0
    err = capsys.readouterr().err
    assert "latexmk not found" in err and "sudo apt-get install latexmk" in err and "make setup" in err
    assert "are written" in err
    assert not Path("paper/main.pdf").exists()
