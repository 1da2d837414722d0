"""The LP-FT toy theory (methods.md 2.6): orderings of ID/OOD error and the gradient identity."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from pipeline.analysis import lpft_theory as lt

CFG = lt.ToyConfig()
EPS = (0.0, 0.05, 0.2)
SEEDS = range(20)


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return lt.run_grid(CFG, EPS, SEEDS)


@pytest.fixture(scope="module")
def means(grid) -> pd.DataFrame:
    """Mean over seeds, indexed by (eps, method)."""
    return lt.summarize(grid).set_index(["eps", "method"])


def test_grid_is_tidy_and_converged(grid):
    assert len(grid) == len(EPS) * len(SEEDS) * len(lt.METHODS)
    assert not grid.duplicated(["eps", "seed", "method"]).any()
    assert set(grid.columns) >= {"eps", "seed", "method", "id_mse", "ood_mse", "off_subspace_change",
                                 "feature_change", "steps"}
    gd = grid[grid.method != "lp"]
    assert (gd.steps < CFG.max_steps).all(), "GD stopped at max_steps instead of the tolerance"
    assert (grid[grid.method == "lp"].steps == 0).all()
    assert (grid[grid.method == "ft"].steps > 10).all()


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_id_error_ft_and_lpft_fit_lp_does_not(means, eps):
    lp, ft, lpft = (means.loc[(eps, m), "id_mse_mean"] for m in lt.METHODS)
    assert lp > 1e-6  # LP pays for the feature error
    assert ft < 1e-10 and lpft < 1e-10
    assert max(ft, lpft) < 1e-6 * lp


@pytest.mark.parametrize("eps, min_ratio", [(0.05, 100.0), (0.2, 5.0)])
def test_ood_error_lpft_le_lp_much_less_than_ft(means, eps, min_ratio):
    lp, ft, lpft = (means.loc[(eps, m), "ood_mse_mean"] for m in lt.METHODS)
    assert lpft <= 1.05 * lp
    assert ft > min_ratio * lp
    assert ft > 0.05  # FT's OOD error is a sizeable fraction of Var(y_ood) = 1, not just larger than LP's


def test_ft_over_lp_ood_ratio_grows_as_eps_shrinks(means):
    ratios = [means.loc[(eps, "ft"), "ood_ratio_ft_lp"] for eps in sorted(EPS)]
    assert ratios[0] > ratios[1] > ratios[2] > 1.0
    # FT's OOD error does not vanish with eps: it is feature distortion, not feature error.
    ft = [means.loc[(eps, "ft"), "ood_mse_mean"] for eps in sorted(EPS)]
    assert min(ft) > 0.5 * max(ft)


def test_eps_zero_lp_and_lpft_are_exact(grid):
    exact = grid[(grid.eps == 0.0) & grid.method.isin(["lp", "lpft"])]
    assert len(exact) == 2 * len(SEEDS)
    assert (exact.id_mse < 1e-20).all() and (exact.ood_mse < 1e-20).all()
    ft = grid[(grid.eps == 0.0) & (grid.method == "ft")]
    assert (ft.ood_mse > 1e-3).all()  # with perfect features, FT still distorts them on every seed


def test_features_move_only_inside_the_id_subspace(grid):
    gd = grid[grid.method != "lp"]
    assert (gd.off_subspace_change <= 1e-8 * gd.feature_change).all()
    assert (grid[grid.method == "ft"].feature_change > 0.05).all()
    lpft = grid[(grid.method == "lpft") & (grid.eps > 0)]
    assert (lpft.feature_change > 0).all()
    # LP-FT starts near a stationary point, so its features move far less than FT's.
    ft = grid[(grid.method == "ft") & (grid.eps > 0)]
    assert lpft.feature_change.max() < 0.5 * ft.feature_change.min()
    lp = grid[grid.method == "lp"]
    assert (lp.feature_change == 0).all()


def test_off_subspace_check_detects_full_rank_inputs():
    """The identity is a property of ID data in S: with full-rank inputs B does move in S^perp."""
    p = lt.make_problem(CFG, seed=0)
    w_star = p.b_star.T @ p.v_star
    x = np.random.default_rng(1).standard_normal((CFG.n, CFG.d))
    b0 = p.rotation @ p.b_star
    _, b, _ = lt._gradient_descent(p.v0, b0, x, x @ w_star, dataclasses.replace(CFG, max_steps=200))
    p_perp = np.eye(CFG.d) - p.basis @ p.basis.T
    assert np.linalg.norm((b - b0) @ p_perp) > 0.01


def test_simulate_is_deterministic_per_seed():
    a, b = lt.simulate(CFG, 0.05, 3), lt.simulate(CFG, 0.05, 3)
    assert a == b
    c = lt.simulate(CFG, 0.05, 4)
    assert [r["ood_mse"] for r in a] != [r["ood_mse"] for r in c]
    assert [r["method"] for r in a] == list(lt.METHODS)


def test_config_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.lr = 1.0
    with pytest.raises(ValueError, match="k < m < d"):
        lt.make_problem(dataclasses.replace(CFG, m=60), seed=0)


def test_summarize(grid):
    summary = lt.summarize(grid)
    assert len(summary) == len(EPS) * len(lt.METHODS)
    assert list(summary.method[:3]) == list(lt.METHODS)
    sub = grid[(grid.eps == 0.2) & (grid.method == "ft")]
    row = summary[(summary.eps == 0.2) & (summary.method == "ft")].iloc[0]
    assert row.ood_mse_mean == pytest.approx(sub.ood_mse.mean())
    assert row.id_mse_std == pytest.approx(sub.id_mse.std(ddof=1))
    lp_mean = grid[(grid.eps == 0.2) & (grid.method == "lp")].ood_mse.mean()
    assert row.ood_ratio_ft_lp == pytest.approx(sub.ood_mse.mean() / lp_mean)


def test_render_table(means):
    from pipeline.reporting.tables import render_template

    tex = render_template(REPO / "paper/templates/lpft_theory.tex.j2", lt.table_context(means.reset_index()))
    lines = [line.strip() for line in tex.strip().splitlines() if not line.startswith("%")]
    assert lines[0].startswith(r"\begin{tabular}") and lines[-1] == r"\end{tabular}"
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in lines
    for label in ("LP", "FT", "LP-FT"):
        assert rf"\multicolumn{{2}}{{c}}{{{label}}}" in tex
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert [row.split(" & ")[0] for row in body] == ["0", "0.05", "0.2"]
    assert all(len(row.split(" & ")) == 1 + 2 * len(lt.METHODS) for row in body)
    ft_ood = means.loc[(0.05, "ft"), "ood_mse_mean"]
    mantissa, exponent = f"{ft_ood:.1e}".split("e")
    assert body[1].split(" & ")[4] == rf"${mantissa}\times10^{{{int(exponent)}}}$"
