"""Toy check of the LP-FT theory (Kumar et al., ICLR 2022) on a two-layer linear network.

The model is ``f(x) = v^T B x`` with features ``B`` (k x d) and head ``v`` (k). The
ground truth is ``y = v*^T B* x`` with orthonormal rows in ``B*``; pretrained features
are ``B0 = U (B* + eps E)`` for a random rotation ``U`` and ``||E||_F = 1``, so
``min_U ||B0 - U B*||_F <= eps``. ID inputs lie in an m-dimensional subspace S, OOD
inputs are ``N(0, I_d)`` and so have most of their mass in S^perp.

Three methods are compared on the mean squared loss over the ID training set:

* ``lp``: the head alone, by least squares with ``B = B0`` fixed;
* ``ft``: gradient descent on ``(v, B)`` from a small random head and ``B0``;
* ``lpft``: the same gradient descent, started from the LP head.

The gradient of the loss in ``B`` is ``2 v r^T X / n`` (``r`` the residual), so rows of
``B`` only move within S and ``B x = B0 x`` for every ``x`` in S^perp. FT changes the head
to fit ID data while the OOD part of the features stays put: the features are
"distorted", and OOD error stays large even as ``eps -> 0``. LP-FT starts near a
stationary point and barely moves.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

METHODS = ("lp", "ft", "lpft")
METHOD_LABELS = {"lp": "LP", "ft": "FT", "lpft": "LP-FT"}
# The recipe's grid: no feature error, small and moderate feature error.
DEFAULT_EPS = (0.0, 0.05, 0.2)
DEFAULT_SEEDS = tuple(range(20))


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy problem and the gradient-descent settings.

    Args:
        d: Input dimension.
        k: Feature dimension (k < m < d).
        m: Dimension of the ID input subspace S.
        n: Number of ID training samples.
        n_eval: Number of fresh samples for each of the ID and OOD test sets.
        lr: Gradient-descent step size (the loss is a mean, so it does not scale with n).
        max_steps: Step cap for FT and LP-FT.
        tol: Stop once the Euclidean norm of the full gradient in ``(v, B)`` falls below this.
        head_init_scale: Norm of the random FT head ``v0``; small, as in the theorem.
    """
    d: int = 50
    k: int = 5
    m: int = 10
    n: int = 200
    n_eval: int = 2000
    lr: float = 0.2
    max_steps: int = 20_000
    tol: float = 1e-8
    head_init_scale: float = 0.05


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """One random instance: everything except the feature error ``eps``."""
    b_star: np.ndarray   # (k, d), orthonormal rows
    v_star: np.ndarray   # (k,), unit norm
    rotation: np.ndarray  # (k, k), orthogonal
    noise: np.ndarray    # (k, d), unit Frobenius norm
    basis: np.ndarray    # (d, m), orthonormal basis of S
    x_train: np.ndarray  # (n, d), rows in S
    x_id: np.ndarray     # (n_eval, d), rows in S
    x_ood: np.ndarray    # (n_eval, d), N(0, I_d)
    v0: np.ndarray       # (k,), small random FT head


def _orthonormal_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Haar-random ``rows x cols`` matrix with orthonormal columns."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    # Fixing the signs of diag(R) makes Q Haar-distributed rather than biased by the QR convention.
    return q * np.sign(np.diag(r))


def make_problem(cfg: ToyConfig, seed: int) -> ToyProblem:
    """Draw one instance; independent of ``eps`` so different eps levels share it (paired comparisons)."""
    if not cfg.k < cfg.m < cfg.d:
        raise ValueError(f"need k < m < d, got k={cfg.k}, m={cfg.m}, d={cfg.d}")
    rng = np.random.default_rng(seed)
    b_star = _orthonormal_columns(rng, cfg.d, cfg.k).T
    v_star = rng.standard_normal(cfg.k)
    v_star /= np.linalg.norm(v_star)  # unit norm: OOD Var(y) = 1, so OOD MSEs read as fractions of it
    rotation = _orthonormal_columns(rng, cfg.k, cfg.k)
    noise = rng.standard_normal((cfg.k, cfg.d))
    noise /= np.linalg.norm(noise)
    basis = _orthonormal_columns(rng, cfg.d, cfg.m)
    x_train = rng.standard_normal((cfg.n, cfg.m)) @ basis.T
    x_id = rng.standard_normal((cfg.n_eval, cfg.m)) @ basis.T
    x_ood = rng.standard_normal((cfg.n_eval, cfg.d))
    v0 = rng.standard_normal(cfg.k)
    v0 *= cfg.head_init_scale / np.linalg.norm(v0)
    return ToyProblem(b_star, v_star, rotation, noise, basis, x_train, x_id, x_ood, v0)


def _gradient_descent(v: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
                      cfg: ToyConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Full-batch GD on ``mean((X B^T v - y)^2)`` until ``||grad|| < tol``; returns ``(v, B, steps)``."""
    n = x.shape[0]
    # The loss only sees X through X^T X / n and X^T y / n; precomputing them makes a step O(kd)
    # instead of O(nd). g below equals 2 X^T r / n, so it lies in span(X^T) = S up to rounding.
    gram, cross = x.T @ x / n, x.T @ y / n
    v, b = v.copy(), b.copy()
    steps = 0
    while steps < cfg.max_steps:
        g = 2.0 * (gram @ (b.T @ v) - cross)
        grad_v = b @ g
        # grad_B = outer(v, g), so its Frobenius norm is ||v|| ||g||: no need to form it for the check.
        if grad_v @ grad_v + (v @ v) * (g @ g) < cfg.tol ** 2:
            break
        v, b = v - cfg.lr * grad_v, b - cfg.lr * np.outer(v, g)  # simultaneous update of both layers
        steps += 1
    return v, b, steps


def simulate(cfg: ToyConfig, eps: float, seed: int) -> list[dict]:
    """Run LP, FT and LP-FT on one instance; one row per method.

    Rows carry ``eps, seed, method, id_mse, ood_mse, off_subspace_change`` (``||(B - B0) P_perp||_F``),
    ``feature_change`` (``||B - B0||_F``) and ``steps`` (GD steps; 0 for LP).
    """
    p = make_problem(cfg, seed)
    w_star = p.b_star.T @ p.v_star
    b0 = p.rotation @ (p.b_star + eps * p.noise)
    y_train = p.x_train @ w_star
    # Least squares on the frozen features; lstsq gives the min-norm solution if they are rank deficient.
    v_lp = np.linalg.lstsq(p.x_train @ b0.T, y_train, rcond=None)[0]
    p_perp = np.eye(cfg.d) - p.basis @ p.basis.T
    fits = {"lp": (v_lp, b0, 0),
            "ft": _gradient_descent(p.v0, b0, p.x_train, y_train, cfg),
            "lpft": _gradient_descent(v_lp, b0, p.x_train, y_train, cfg)}
    rows = []
    for method in METHODS:
        v, b, steps = fits[method]
        w = b.T @ v
        rows.append({"eps": float(eps), "seed": int(seed), "method": method,
                     "id_mse": float(np.mean((p.x_id @ (w - w_star)) ** 2)),
                     "ood_mse": float(np.mean((p.x_ood @ (w - w_star)) ** 2)),
                     "off_subspace_change": float(np.linalg.norm((b - b0) @ p_perp)),
                     "feature_change": float(np.linalg.norm(b - b0)),
                     "steps": int(steps)})
    return rows


def run_grid(cfg: ToyConfig, eps_levels: Iterable[float] = DEFAULT_EPS,
             seeds: Iterable[int] = DEFAULT_SEEDS) -> pd.DataFrame:
    """Tidy frame with one row per ``eps x seed x method``."""
    seeds = list(seeds)
    rows = [row for eps in eps_levels for seed in seeds for row in simulate(cfg, eps, seed)]
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1) over seeds of ID/OOD MSE per ``eps x method``, plus ``ood_ratio_ft_lp``.

    The ratio is mean FT OOD MSE over mean LP OOD MSE at the same eps (inf where LP is exactly 0).
    """
    summary = (df.groupby(["eps", "method"], sort=True)[["id_mse", "ood_mse"]]
               .agg(["mean", "std"]))
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary = summary.reset_index()
    ood = summary.pivot(index="eps", columns="method", values="ood_mse_mean")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ood["ft"] / ood["lp"]
    summary["ood_ratio_ft_lp"] = summary["eps"].map(ratio)
    # Methods in METHODS order (lp, ft, lpft) rather than alphabetical; unknown methods go last.
    rank = {m: i for i, m in enumerate(METHODS)}
    summary["_rank"] = summary["method"].map(lambda m: rank.get(m, len(rank)))
    return summary.sort_values(["eps", "_rank", "method"], ignore_index=True).drop(columns="_rank")


def _sci(x: float) -> str:
    """``1.2\\times10^{-3}`` style number for a table cell."""
    if not np.isfinite(x):
        return "--"
    if x == 0:
        return "$0$"
    mantissa, exponent = f"{x:.1e}".split("e")
    return rf"${mantissa}\times10^{{{int(exponent)}}}$"


def table_context(summary: pd.DataFrame, methods: Sequence[str] = METHODS) -> dict:
    """What ``paper/templates/lpft_theory.tex.j2`` needs: per eps, the mean ID and OOD MSE of each method."""
    cells = summary.set_index(["eps", "method"])
    rows = [{"eps": f"{eps:g}", "cells": [_sci(cells.loc[(eps, m), q]) for m in methods
                                          for q in ("id_mse_mean", "ood_mse_mean")]}
            for eps in sorted(summary["eps"].unique())]
    return {"methods": [METHOD_LABELS.get(m, m) for m in methods], "rows": rows}
