"""Stages ``report`` and ``paper`` on synthetic tidy metrics: LP, 3 methods x 3 seeds, a swept
method (SPD, 2 grid points), soups, WiSE-FT, per-layer tables and gradient norms."""
from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config.settings import hp_names
from pipeline.evaluation.metrics import COLUMNS
from pipeline.evaluation.predictions import SplitPredictions, entry_ids, save_predictions
from pipeline.reporting import aggregate
from pipeline.reporting.cells import Cell, cell_tex, latex_escape
from pipeline.stages import costs, paper, report

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
# method: (ID test acc, mnist_m acc, sklearn_digits acc) at seed 0; ID +1 and mnist_m +2 points per seed.
BASE = {"ft_adamw": (0.90, 0.50, 0.70), "ft_sgd": (0.80, 0.30, 0.50), "lpft": (0.94, 0.60, 0.80)}
# SPD's two grid points: ID val prefers lambda 1 (0.95 vs 0.90), OOD val prefers 0.3 (0.70 vs 0.60).
SPD = {"epochs2_lr0.0003_spd_lambda0.3": dict(test=(0.70, 0.20, 0.40), id_val=0.90, ood_val=0.70),
       "epochs2_lr0.0003_spd_lambda1": dict(test=(0.85, 0.45, 0.65), id_val=0.95, ood_val=0.60)}
# The run names params.yaml gives these methods (pipeline.config.settings.run_name; the fixture checks them).
RUN_HP = {"ft_adamw": "epochs2_lr0.0003", "ft_sgd": "effective_lr0.01_epochs2", "lpft": "epochs2_lr0.0001"}
SOUPS = {"uniform_soup": (0.60, 0.20, 0.30), "greedy_soup": (0.92, 0.55, 0.75)}
WISE = ("ft_adamw", "lpft")
LP = (0.85, 0.40, 0.60)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
ID_VAL_ALPHA = {"ft_adamw": (0.5, 0.5, 0.75), "lpft": (0.5, 0.5, 0.5)}
ORACLE_ALPHA = 0.25
ODD_LABEL = "50% & co_x"
# Sizes at which every accuracy of the fixture is a whole number of examples.
N_ID = 1000
N_DOMAIN = {"mnist_m": 400, "sklearn_digits": 100}
N_OOD = sum(N_DOMAIN.values())
METHODS = [*BASE, "spd"]


def split_rows(id_acc: float, mnist_m: float, sklearn: float, id_val: float = 0.01, ood_val: float = 0.03
               ) -> list[dict]:
    """Rows of every split; the n-weighted OOD 'all' rows are decoys the report must not use."""
    all_ood = (N_DOMAIN["mnist_m"] * mnist_m + N_DOMAIN["sklearn_digits"] * sklearn) / N_OOD
    rows = [{"split": "id_val", "domain": "all", "value": id_val, "n": N_ID},
            {"split": "id_test", "domain": "all", "value": id_acc, "n": N_ID},
            {"split": "ood_val", "domain": "all", "value": 0.02, "n": N_OOD},
            {"split": "ood_test", "domain": "all", "value": all_ood, "n": N_OOD}]
    for split in ("ood_val", "ood_test"):
        for d, v in (("mnist_m", mnist_m), ("sklearn_digits", sklearn)):
            rows.append({"split": split, "domain": d, "value": v if split == "ood_test" else ood_val,
                         "n": N_DOMAIN[d]})
    return rows


def correct(acc: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(acc * n) correct examples, at random places."""
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[:round(acc * n)]] = True
    return out


def split_predictions(id_acc: float, mnist_m: float, sklearn: float, rng: np.random.Generator) -> dict:
    """The per-example predictions behind split_rows(id_acc, mnist_m, sklearn) on id_test and ood_test."""
    def preds(ok: np.ndarray, domains: np.ndarray) -> SplitPredictions:
        return SplitPredictions((~ok).astype(np.int32), np.full(len(ok), 0.75, np.float32), ok, domains)

    ood = np.concatenate([correct(mnist_m, N_DOMAIN["mnist_m"], rng),
                          correct(sklearn, N_DOMAIN["sklearn_digits"], rng)])
    domains = np.repeat(list(N_DOMAIN), list(N_DOMAIN.values()))
    return {"id_test": preds(correct(id_acc, N_ID, rng), np.full(N_ID, "digits")), "ood_test": preds(ood, domains)}


def write_predictions(path: Path, entries: dict[str, tuple[dict, tuple[float, float, float]]]) -> None:
    """entries: {entry: (ids, (id acc, mnist_m acc, sklearn acc))}; examples differ per entry."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    save_predictions(path, {e: (entry_ids(**ids), split_predictions(*accs, rng)) for e, (ids, accs) in entries.items()})


def frame(rows: list[dict], **ids) -> pd.DataFrame:
    hp = RUN_HP.get(ids.get("method"), "default")
    df = pd.DataFrame([{"dataset": "digits", "model": "lite0", "hp": hp, "seed": 0, "alpha": np.nan,
                        "selection": "", "metric": "acc", "config_hash": "0123", **ids, **r} for r in rows])
    return df[COLUMNS]


def wise_values(method: str, alpha: float, seed: int) -> tuple[float, float, float]:
    i, m, s = BASE[method]
    return i - 0.1 * (1 - alpha) + 0.01 * seed, m + 0.2 * alpha * (1 - alpha) + 0.02 * seed, s


def ids(method: str, hp: str | None = None, seed: int = 0, alpha: float | None = None) -> dict:
    hp = RUN_HP.get(method, "default") if hp is None else hp
    return {"dataset": "digits", "model": "lite0", "method": method, "hp": hp, "seed": seed, "alpha": alpha}


def write_run(d: Path, method: str, hp: str, seed: int, accs: tuple[float, float, float], **split_kw) -> None:
    d.mkdir(parents=True)
    frame(split_rows(*accs, **split_kw), method=method, hp=hp, seed=seed).to_csv(d / "metrics.csv", index=False)
    write_predictions(d / "predictions.npz", {"model": (ids(method, hp, seed), accs)})
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
    write_predictions(run_root / "lp/predictions.npz", {"model": (ids("lp", "C0.1"), LP)})
    pd.DataFrame([{"group": g, "index": i, "n_params": 10, "grad_norm": 1.0 / (i + 1), "grad_norm_per_param": 0.1,
                   "param_norm": 1.0, "embed": i < 2, "dataset": "digits", "model": "lite0", "config_hash": "0"}
                  for i, g in enumerate(["stem", "blocks.0", "head"])]).to_csv(run_root / "grad_norms.csv",
                                                                                  index=False)
    for seed in SEEDS:
        for method, (i, m, s) in BASE.items():
            d = run_root / method / RUN_HP[method] / f"seed{seed}"
            write_run(d, method, RUN_HP[method], seed, (i + 0.01 * seed, m + 0.02 * seed, s))
            if method not in WISE:
                continue
            grid = {a: split_rows(*wise_values(method, a, seed)) for a in ALPHAS}
            write_predictions(d / "wise_ft_predictions.npz",
                              {f"alpha{a:g}": (ids(method, seed=seed, alpha=a), wise_values(method, a, seed))
                               for a in ALPHAS})
            parts = [frame(rows, method=method, seed=seed, alpha=a, selection="grid") for a, rows in grid.items()]
            chosen = ID_VAL_ALPHA[method][seed]
            parts.append(frame(grid[chosen], method=method, seed=seed, alpha=chosen, selection="id_val"))
            parts.append(frame(grid[ORACLE_ALPHA], method=method, seed=seed, alpha=ORACLE_ALPHA,
                               selection="ood_val_oracle"))
            pd.concat(parts).to_csv(d / "wise_ft.csv", index=False)
        for hp, v in SPD.items():
            i, m, s = v["test"]
            write_run(run_root / "spd" / hp / f"seed{seed}", "spd", hp, seed, (i + 0.01 * seed, m, s),
                      id_val=v["id_val"], ood_val=v["ood_val"])
        soup_dir = run_root / "soup" / f"seed{seed}"
        soup_dir.mkdir(parents=True)
        pd.concat([frame(split_rows(*v), method=name, hp="2of5", seed=seed) for name, v in SOUPS.items()]).to_csv(
            soup_dir / "metrics.csv", index=False)
        write_predictions(soup_dir / "predictions.npz",
                          {name: (ids(name, "2of5", seed), v) for name, v in SOUPS.items()})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiment"].update(datasets=["digits"], models=["lite0"], methods=METHODS, seeds=list(SEEDS))
    params["methods"]["spd"]["grid"] = {"spd_lambda": [0.3, 1.0]}
    assert {m: hp_names(params, m, "digits") for m in METHODS} == {**{m: [hp] for m, hp in RUN_HP.items()},
                                                                    "spd": list(SPD)}
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
    from pipeline.stages import lpft_theory

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
        "lp", "ft_adamw", "ft_sgd", "lpft", "spd", "uniform_soup", "greedy_soup", "ft_adamw/wise_ft_fixed",
        "lpft/wise_ft_fixed", "ft_adamw/wise_ft", "lpft/wise_ft", "spd/oracle_hp", "ft_adamw/wise_ft_oracle",
        "lpft/wise_ft_oracle"]
    # SPD: grid point chosen on ID val (lambda 1: ID 85, 86, 87); the oracle row uses OOD val's (lambda 0.3).
    assert stat(summary, "spd", "id_acc") == pytest.approx((0.86, 0.01, 3))
    assert stat(summary, "spd/oracle_hp", "id_acc") == pytest.approx((0.71, 0.01, 3))
    assert set(summary.loc[summary["row"] == "spd", "hp"]) == {"epochs2_lr0.0003_spd_lambda1"}
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
    assert set(rows) == {"lp", *METHODS, *SOUPS, *(f"{m}/wise_ft" for m in WISE), *(f"{m}/wise_ft_fixed" for m in WISE),
                         *(f"{m}/wise_ft_oracle" for m in WISE), "spd/oracle_hp"}
    assert rows["ft_adamw"] == {"id_acc": pytest.approx(0.91), "ood_acc": pytest.approx(0.61)}
    assert rows["lp"]["id_acc"] == pytest.approx(0.85)


def table_row(tex: str, label: str, nth: int = 0) -> list[str]:
    """The cells of the ``nth`` table row whose label is ``label``."""
    line = [ln for ln in tex.splitlines() if ln.startswith(label + " & ")][nth]
    return [c.strip() for c in line.removesuffix(r"\\").split(" & ")[1:]]


def test_table_is_escaped_booktabs(reported: Path) -> None:
    tex = Path("paper/tables/results.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:results}", r"\cmidrule(lr){4-6}",
                  r"\sbox0{\begin{tabular}{lrrrrrr}", r"\textbf{Digits / lite0}",
                  "Method & $\\alpha$ & accuracy & mean & MNIST-M & scikit-learn digits",   # names, not keys
                  "FT (AdamW) + WiSE-FT, $\\alpha$ on OOD val", "SPD, grid point on OOD val", "Greedy soup",
                  "grid point spd\\_lambda1 chosen on ID val of 2"):
        assert token in tex, token
    assert "selected on OOD val" in tex and "selected on ID val" in tex and "mean over 3 seeds" in tex
    assert r"50\% \& co\_x" in tex and ODD_LABEL not in tex
    # mean [95% interval] per cell; FT (AdamW) is the baseline (params.yaml), so it carries no mark
    cells = table_row(tex, "FT (AdamW)")
    assert cells[0] == "--" and cells[1].startswith(r"91.0\,{\scriptsize[") and cells[2].startswith("61.0")
    assert [c.split("\\")[0] for c in cells[3:5]] == ["52.0", "70.0"] and not any("$^{" in c for c in cells)
    # LP is 6 points below on ID with 1000 examples: significant; the greedy soup (+1 point ID) is not
    assert table_row(tex, "LP")[1].endswith("$^{-}$") and not table_row(tex, "Greedy soup")[1].endswith("}$")
    assert table_row(tex, "FT (AdamW) + WiSE-FT")[0] == "0.58"
    assert "lr 0.01 (effective 0.1)" in tex and "lr 3e-4;" in tex
    assert "\\VAR" not in tex and "%%" not in tex
    assert Path("paper/tables/tables.tex").read_text().splitlines()[1:] == [r"\input{tables/results}"]


def test_latex_escape_and_cells() -> None:
    assert latex_escape(r"a_b%c&d#e$f{g}~^\ ") == (r"a\_b\%c\&d\#e\$f\{g\}\textasciitilde{}"
                                                  r"\textasciicircum{}\textbackslash{} ")
    assert cell_tex(Cell(value=0.91234, low=0.9, high=0.925, mark="+")) == r"91.2\,{\scriptsize[90.0, 92.5]}$^{+}$"
    assert cell_tex(Cell(value=0.5)) == "50.0"
    assert cell_tex(Cell()) == "--"
    assert cell_tex(Cell("published", value=98.2, delta=-0.4)) == r"98.2\,{\scriptsize($-$0.4)}"
    assert cell_tex(Cell("number", value=-0.025)) == "$-$2.5"


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
    # every figure as PDF (paper) and PNG (the HTML report); the claims section too, all rewritten identically
    extra = [Path(f"paper/figures/{name}.{ext}") for name in ("grad_norms", "layers", "effective_robustness")
             for ext in ("pdf", "png")] + [Path("paper/tables/claims.tex"), Path("results/report/claims.csv"),
                                           Path("results/report/tables/claims.html")]
    extra_bytes = [e.read_bytes() for e in extra]
    assert all(b.startswith(b"%PDF" if e.suffix == ".pdf" else b"\x89PNG" if e.suffix == ".png" else b"")
               for e, b in zip(extra, extra_bytes))
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


def summary_row(row: str, quantity: str) -> pd.Series:
    s = pd.read_csv("results/report/summary.csv")
    hit = s[(s["row"] == row) & (s["quantity"] == quantity)]
    assert len(hit) == 1, (row, quantity)
    return hit.iloc[0]


def test_intervals_cover_the_mean_and_match_the_binomial(reported: Path) -> None:
    s = pd.read_csv("results/report/summary.csv")
    acc = s[s["quantity"].str.match(r"^(id|ood)_acc") & s["ci_low"].notna()]
    assert len(acc) > 40 and ((acc["ci_low"] <= acc["mean"]) & (acc["mean"] <= acc["ci_high"])).all()
    # LP: one run, 1000 ID examples at 85%: the interval is the binomial one, about +-1.96 sqrt(p(1-p)/n)
    lp = summary_row("lp", "id_acc")
    assert (lp["ci_high"] - lp["ci_low"]) / 2 == pytest.approx(1.96 * math.sqrt(0.85 * 0.15 / N_ID), rel=0.2)
    # three seeds (90, 91, 92%) are resampled too: wider than their 3000 examples alone would give
    ft = summary_row("ft_adamw", "id_acc")
    assert (ft["ci_high"] - ft["ci_low"]) / 2 > 1.3 * 1.96 * math.sqrt(0.91 * 0.09 / (3 * N_ID))
    # ECE and the WiSE-FT alpha are not accuracies: no interval
    assert summary_row("ft_adamw/wise_ft", "alpha")[["ci_low", "ci_high"]].isna().all()


def test_paired_comparisons_with_the_baseline(reported: Path) -> None:
    lp = summary_row("lp", "id_acc")
    assert lp["baseline"] == "ft_adamw" and lp["delta"] == pytest.approx(0.85 - 0.91)
    assert lp["delta_high"] < 0 and bool(lp["significant"])
    # +4 points OOD (65% against 60, 61, 62%) on 100-400 independently drawn examples per domain: not significant;
    # LP-FT's +10 points is
    greedy = summary_row("greedy_soup", "ood_acc")
    assert greedy["delta"] == pytest.approx(0.04) and not bool(greedy["significant"])
    assert greedy["delta_low"] < 0 < greedy["delta_high"]
    lpft = summary_row("lpft", "ood_acc")
    assert lpft["delta"] == pytest.approx(0.10) and bool(lpft["significant"]) and lpft["delta_low"] > 0
    assert math.isnan(summary_row("ft_adamw", "id_acc")["delta"])   # the baseline itself


def test_effective_robustness_is_the_logit_linear_fit(reported: Path) -> None:
    from scipy.special import expit, logit

    s = pd.read_csv("results/report/summary.csv")
    fit = pd.read_csv("results/report/effective_robustness.csv").iloc[0]
    pts = s[s["kind"].isin(["zeroshot", "lp", "ft", "soup", "wise_ft"])].pivot_table(
        index="row", columns="quantity", values="mean")[["id_acc", "ood_acc"]]
    slope, intercept = np.polyfit(logit(pts["id_acc"]), logit(pts["ood_acc"]), 1)
    assert (fit["dataset"], fit["n_points"]) == ("digits", len(pts)) == ("digits", 9)
    assert (fit["slope"], fit["intercept"]) == pytest.approx((slope, intercept), rel=1e-5)
    er = pts["ood_acc"] - expit(intercept + slope * logit(pts["id_acc"]))
    assert summary_row("lpft", "er")["mean"] == pytest.approx(er["lpft"])
    assert "er" not in set(s.loc[s["kind"] == "oracle", "quantity"])    # oracles are not fitted
    scatter = pd.read_csv("results/report/id_vs_ood.csv").set_index("row")
    assert scatter.loc["lpft", "id_acc"] == pytest.approx(95.0) and len(scatter) == 9
    fig = Path("paper/figures/effective_robustness.pdf").read_bytes()
    assert fig.startswith(b"%PDF") and Path("paper/figures/effective_robustness.png").stat().st_size > 10_000


def test_every_layout_renders_as_latex_and_html(reported: Path) -> None:
    html = Path("results/report/tables/results.html").read_text()
    assert "<table>" in html and "91.0 <small>[" in html and "50% &amp; co_x" in html
    fe = Path("paper/tables/freeze_embed.tex").read_text()
    assert r"\textbf{lite0} & \multicolumn{2}{c}{digits} & \multicolumn{2}{c}{Avg.} \\" in fe
    assert table_row(fe, "FT (AdamW)")[0].startswith("91.0")
    lpft = Path("paper/tables/lpft.tex").read_text()
    assert r"\textbf{ID accuracy}" in lpft and r"\textbf{OOD accuracy}" in lpft
    assert [c[:4] for c in table_row(lpft, "LP-FT")] == ["95.0", "95.0"]
    assert [c[:4] for c in table_row(lpft, "LP-FT", 1)] == ["62.0", "80.0", "71.0"]
    wise = Path("paper/tables/wise_ft.tex").read_text()
    labels = [ln.split(" & ")[0] for ln in wise.splitlines() if " & " in ln and not ln.startswith(r"\textbf")]
    assert labels[1:5] == ["FT (AdamW)", r"FT (AdamW) + WiSE-FT, $\alpha$ 0.5", "FT (AdamW) + WiSE-FT",
                           "LP-FT"]
    # WiSE-FT at alpha 0.5, seed s: ID 0.85 + 0.01 s -> 86.0
    assert table_row(wise, r"FT (AdamW) + WiSE-FT, $\alpha$ 0.5")[0].startswith("86.0")


def test_published_values_sit_beside_the_results(project: Path) -> None:
    Path("paper/reference").mkdir(parents=True)
    Path("paper/reference/demo.yaml").write_text(yaml.safe_dump({"paper": "Someone et al. 2099", "tables": [
        {"source": "Table 1", "side": "id", "values": {"lite0": {"ft_adamw": {"digits": 90.0, "average": 90.5}}}},
        {"source": "Table 2", "side": "ood", "values": {"lite0": {"ft_adamw": {"digits": 65.0}}}}]}))
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["report"].update(tables=["freeze_embed", "results"], reference=["paper/reference/demo.yaml"])
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert report.main([]) == 0
    fe = Path("paper/tables/freeze_embed.tex").read_text().splitlines()
    ours = next(i for i, ln in enumerate(fe) if ln.startswith("FT (AdamW) & "))
    published = fe[ours + 1]
    assert published.startswith(r"\quad{\scriptsize\emph{published: Someone et al. 2099}}")
    # ours 91.0 / 61.0 / average 91.0: the differences are +1.0, -4.0, +0.5
    assert published.split(" & ")[1:] == [r"90.0\,{\scriptsize($+$1.0)}", r"65.0\,{\scriptsize($-$4.0)}",
                                           r"90.5\,{\scriptsize($+$0.5)}", r"-- \\"]
    assert Path("paper/tables/tables.tex").read_text().splitlines()[1:] == [r"\input{tables/freeze_embed}",
                                                                           r"\input{tables/results}"]


def test_stale_predictions_stop_the_report(project: Path) -> None:
    run = Path("results/digits/lite0/ft_adamw/epochs2_lr0.0003/seed1")
    write_predictions(run / "predictions.npz", {"model": (ids("ft_adamw", seed=1), (0.5, 0.5, 0.5))})
    with pytest.raises(ValueError, match="ft_adamw/epochs2_lr0.0003/1 give id_test accuracy 0.500000 but its "
                                         "metrics say"):
        report.main([])


def test_optimal_alpha_is_a_per_column_oracle(reported: Path) -> None:
    """report.wise_ft_optimal: the WiSE-FT paper's "optimal alpha", the best alpha of each column on its own."""
    results = aggregate.read_tidy(["results/report/results.csv"])
    cfg = {**yaml.safe_load(Path("params.yaml").read_text())["report"], "wise_ft_optimal": True}
    summary = aggregate.summarise(results, cfg, METHODS)
    assert list(dict.fromkeys(summary["row"]))[-2:] == ["ft_adamw/wise_ft_optimal", "lpft/wise_ft_optimal"]
    # ID rises with alpha: alpha 1 (0.90, 0.91, 0.92); mnist_m = m + 0.2 a (1 - a) + 0.02 s peaks at alpha 0.5
    assert stat(summary, "ft_adamw/wise_ft_optimal", "id_acc") == pytest.approx((0.91, 0.01, 3))
    assert stat(summary, "ft_adamw/wise_ft_optimal", "ood_acc/mnist_m") == pytest.approx((0.57, 0.02, 3))
    # sklearn_digits does not move with alpha: a tie over the grid goes to the smallest alpha (0), same value
    assert stat(summary, "ft_adamw/wise_ft_optimal", "ood_acc/sklearn_digits")[0] == pytest.approx(0.70)
    rows = summary[summary["row"] == "ft_adamw/wise_ft_optimal"]
    assert "alpha" not in set(rows["quantity"]) and not rows["quantity"].str.contains("ece").any()
    assert set(rows["label"]) == {"FT (AdamW) + WiSE-FT, optimal alpha per column (oracle)"}
    assert set(rows["kind"]) == {"wise_ft_optimal"} and len(set(rows["hp"])) == 1
    # each column picks its own alpha: no single alpha's row reaches both optima
    curves = aggregate.wise_ft_curves(results, cfg).query("method == 'ft_adamw'")
    best = {q: curves[curves["quantity"] == q].set_index("alpha")["mean"].idxmax() for q in ("id_acc", "ood_acc")}
    assert best == {"id_acc": 1.0, "ood_acc": 0.5}
    assert aggregate.summarise(results, {**cfg, "wise_ft_optimal": False}, METHODS)["kind"].ne(
        "wise_ft_optimal").all()


def test_wise_ft_table_has_the_papers_rows_and_published_row_ids(project: Path) -> None:
    """The WiSE-FT table with a fixed alpha and the oracle row; published values are keyed by row id."""
    Path("paper/reference").mkdir(parents=True)
    Path("paper/reference/wise.yaml").write_text(yaml.safe_dump({"paper": "Wortsman et al. 2022", "tables": [
        {"source": "Table 8", "side": "id", "values": {"lite0": {
            "ft_adamw/wise_ft_fixed": {"digits": 85.0}, "ft_adamw/wise_ft_optimal": {"digits": 90.0}}}}]}))
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["report"].update(tables=["wise_ft"], reference=["paper/reference/wise.yaml"], wise_ft_optimal=True)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert report.main([]) == 0
    wise = Path("paper/tables/wise_ft.tex").read_text().splitlines()
    labels = [ln.split(" & ")[0] for ln in wise if " & " in ln and not ln.startswith(r"\textbf")]
    assert labels[1:7] == ["FT (AdamW)", r"FT (AdamW) + WiSE-FT, $\alpha$ 0.5",
                           r"\quad{\scriptsize\emph{published: Wortsman et al. 2022}}", "FT (AdamW) + WiSE-FT",
                           r"FT (AdamW) + WiSE-FT, optimal $\alpha$ per column (oracle)",
                           r"\quad{\scriptsize\emph{published: Wortsman et al. 2022}}"]
    fixed = next(i for i, ln in enumerate(wise) if ln.startswith(r"FT (AdamW) + WiSE-FT, $\alpha$ 0.5 &"))
    assert wise[fixed + 1].split(" & ")[1] == r"85.0\,{\scriptsize($+$1.0)}"   # ours 86.0
    optimal = next(i for i, ln in enumerate(wise) if ln.startswith("FT (AdamW) + WiSE-FT, optimal"))
    assert wise[optimal].split(" & ")[1].startswith("91.0") and "[" not in wise[optimal].split(" & ")[1]  # no CI
    assert wise[optimal + 1].split(" & ")[1] == r"90.0\,{\scriptsize($+$1.0)}"
    bad = {"paper": "X", "tables": [{"source": "T", "side": "id", "values": {"lite0": {"ft_adamw/wiseft": {
        "digits": 1.0}}}}]}
    Path("paper/reference/wise.yaml").write_text(yaml.safe_dump(bad))
    from pipeline.config import ParamsError, load_params
    with pytest.raises(ParamsError, match="row 'ft_adamw/wiseft': 'wiseft' is not a row kind"):
        load_params("params.yaml")
