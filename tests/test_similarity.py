"""Domain similarity (Cui et al. 2018 as in Li et al. 2020): EMD between weighted class means, exp(-0.01 EMD).

Checked against closed forms (equal weights on a line: the sorted matching; one class each: the
distance of the means), against scipy's 1-D Wasserstein distance and an LP solved by scipy's
linprog (independent of POT), against ot.emd2 called directly on random class means, and for the
invariances the definition implies.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.analysis.similarity import (
    GAMMA,
    ClassMeans,
    class_means,
    domain_similarity,
    emd,
    ground_distance,
    similarity,
    similarity_from_emd,
)


def samples_around(means: np.ndarray, counts: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features whose per-class means are exactly ``means`` (symmetric offsets), ``counts[k]`` per class."""
    xs, ys = [], []
    for k, (mu, n) in enumerate(zip(means, counts)):
        half = rng.normal(size=(n // 2, means.shape[1]))
        offsets = np.concatenate([half, -half] + ([np.zeros((1, means.shape[1]))] if n % 2 else []))
        xs.append(mu + offsets)
        ys += [10 * k + 3] * n   # labels need not be 0..K-1
    return np.concatenate(xs), np.array(ys)


def line(points, weights=None) -> ClassMeans:
    p = np.asarray(points, dtype=np.float64)[:, None]
    w = np.full(len(p), 1 / len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    return ClassMeans(p, w / w.sum(), np.arange(len(p)))


def random_domain(rng: np.random.Generator, k: int, d: int, scale: float = 1.0) -> ClassMeans:
    w = rng.random(k) + 0.05
    return ClassMeans(scale * rng.normal(size=(k, d)), w / w.sum(), np.arange(k))


# --- class means and weights --------------------------------------------------------------------------------

def test_class_means_and_frequency_weights() -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 5))
    x, y = samples_around(means, [2, 5, 13], rng)
    perm = rng.permutation(len(y))
    got = class_means(x[perm], y[perm])
    assert got.classes.tolist() == [3, 13, 23]
    np.testing.assert_allclose(got.means, means, atol=1e-12)
    np.testing.assert_allclose(got.weights, np.array([2, 5, 13]) / 20)
    assert math.isclose(got.weights.sum(), 1.0)
    from_torch = class_means(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
    np.testing.assert_allclose(from_torch.means, means, atol=1e-5)


@pytest.mark.parametrize("features, labels, match", [
    (np.zeros((3, 2)), np.zeros(2), "must be"),
    (np.zeros((0, 2)), np.zeros(0), "no examples"),
    (np.array([[0.0, np.nan]]), np.zeros(1), "NaN"),
    (np.zeros(3), np.zeros(3), "must be"),
])
def test_class_means_rejects_bad_input(features, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        class_means(features, labels)


def test_feature_sizes_must_agree() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="feature sizes differ"):
        emd(random_domain(rng, 3, 4), random_domain(rng, 3, 5))


# --- closed forms and independent solvers -------------------------------------------------------------------

def test_equal_weights_on_a_line_is_the_sorted_matching() -> None:
    """With K equal-weight classes on each side of a line, the optimal flow matches them in sorted order."""
    rng = np.random.default_rng(1)
    xs, ys = rng.normal(size=7) * 10, rng.normal(size=7) * 10 + 3
    expected = np.mean(np.abs(np.sort(xs) - np.sort(ys)))
    assert emd(line(xs), line(ys)) == pytest.approx(expected, rel=1e-12)
    # The same through features: each class a symmetric cloud around its mean, equal counts per class.
    src = class_means(*samples_around(xs[:, None], [4] * 7, rng))
    tgt = class_means(*samples_around(ys[:, None], [4] * 7, rng))
    assert emd(src, tgt) == pytest.approx(expected, rel=1e-9)
    assert similarity(src, tgt) == pytest.approx(math.exp(-GAMMA * expected), rel=1e-9)


def test_unequal_weights_on_a_line_match_scipy_wasserstein() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(2)
    for k_s, k_t in ((3, 5), (8, 2), (6, 6)):
        xs, ys = rng.normal(size=k_s), rng.normal(size=k_t) + 0.5
        ws, wt = rng.random(k_s) + 0.1, rng.random(k_t) + 0.1
        assert emd(line(xs, ws), line(ys, wt)) == pytest.approx(wasserstein_distance(xs, ys, ws, wt), rel=1e-9)


def test_one_class_each_is_the_distance_of_the_means() -> None:
    a = ClassMeans(np.array([[0.0, 3.0, 0.0]]), np.ones(1), np.zeros(1))
    b = ClassMeans(np.array([[4.0, 0.0, 0.0]]), np.ones(1), np.zeros(1))
    assert emd(a, b) == pytest.approx(5.0)
    assert similarity(a, b) == pytest.approx(math.exp(-0.05))


def test_matches_a_linear_program_solved_by_scipy() -> None:
    """min sum f_ij d_ij s.t. row sums = source weights, column sums = target weights, f >= 0 (HiGHS)."""
    from scipy.optimize import linprog
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    src, tgt = random_domain(rng, 5, 8), random_domain(rng, 4, 8)
    d = cdist(src.means, tgt.means)
    m, n = d.shape
    rows = np.kron(np.eye(m), np.ones(n))
    cols = np.kron(np.ones(m), np.eye(n))
    res = linprog(d.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([src.weights, tgt.weights]),
                  bounds=(0, None), method="highs")
    assert res.status == 0
    assert emd(src, tgt) == pytest.approx(res.fun, rel=1e-7)
    np.testing.assert_allclose(ground_distance(src, tgt), d, rtol=1e-12)


@pytest.mark.parametrize("k_s, k_t, dim", [(10, 7, 2048), (50, 120, 16), (1, 9, 3)])
def test_matches_ot_emd2_on_random_class_means(k_s: int, k_t: int, dim: int) -> None:
    import ot
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(k_s * 1000 + k_t)
    src, tgt = random_domain(rng, k_s, dim, scale=3.0), random_domain(rng, k_t, dim, scale=3.0)
    direct = ot.emd2(src.weights, tgt.weights, cdist(src.means, tgt.means))
    assert emd(src, tgt) == pytest.approx(float(direct), rel=1e-9)


# --- invariances and sanity ---------------------------------------------------------------------------------

def test_identity_symmetry_and_range() -> None:
    rng = np.random.default_rng(4)
    a, b = random_domain(rng, 6, 10), random_domain(rng, 9, 10)
    assert emd(a, a) == pytest.approx(0.0, abs=1e-12) and similarity(a, a) == pytest.approx(1.0)
    assert emd(a, b) == pytest.approx(emd(b, a), rel=1e-12)
    assert 0.0 < similarity(a, b) < 1.0


def test_invariant_to_rigid_motions_and_class_order_scaled_by_scale() -> None:
    rng = np.random.default_rng(5)
    a, b = random_domain(rng, 6, 10), random_domain(rng, 8, 10)
    base = emd(a, b)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))   # a random orthogonal map
    shift = rng.normal(size=10) * 100

    def moved(x: ClassMeans, f) -> ClassMeans:
        return ClassMeans(f(x.means), x.weights, x.classes)

    assert emd(moved(a, lambda m: m @ q + shift), moved(b, lambda m: m @ q + shift)) == pytest.approx(base, rel=1e-9)
    perm = rng.permutation(8)
    assert emd(a, ClassMeans(b.means[perm], b.weights[perm], b.classes[perm])) == pytest.approx(base, rel=1e-12)
    assert emd(moved(a, lambda m: 2.5 * m), moved(b, lambda m: 2.5 * m)) == pytest.approx(2.5 * base, rel=1e-9)


def test_depends_on_class_frequencies_not_sample_counts() -> None:
    """Duplicating every example keeps the weights, hence the EMD; reweighting the classes changes it."""
    rng = np.random.default_rng(6)
    xs, ys = samples_around(rng.normal(size=(4, 6)), [3, 5, 7, 9], rng)
    xt, yt = samples_around(rng.normal(size=(3, 6)), [4, 4, 8], rng)
    once = domain_similarity(xs, ys, xt, yt)
    twice = domain_similarity(np.concatenate([xs, xs]), np.concatenate([ys, ys]), xt, yt)
    assert twice["emd"] == pytest.approx(once["emd"], rel=1e-12)
    assert (once["source_classes"], once["target_classes"]) == (4, 3)
    keep = ys != ys[0]
    fewer = domain_similarity(np.concatenate([xs, xs[keep]]), np.concatenate([ys, ys[keep]]), xt, yt)
    assert fewer["emd"] != pytest.approx(once["emd"], rel=1e-6)


def test_similarity_decreases_with_distance_and_gamma() -> None:
    assert similarity_from_emd(0.0) == 1.0
    assert similarity_from_emd(10.0) == pytest.approx(math.exp(-0.1))
    assert similarity_from_emd(10.0) > similarity_from_emd(20.0)
    assert similarity_from_emd(10.0, gamma=0.1) < similarity_from_emd(10.0)
    with pytest.raises(ValueError):
        similarity_from_emd(-1.0)
    # Li et al. Table 4's ImageNet R-101 similarities 0.840-0.892 correspond to EMDs of about 11-17.
    assert -math.log(0.892) / GAMMA == pytest.approx(11.43, abs=0.01)


def test_an_unconverged_transport_stops(monkeypatch) -> None:
    import warnings

    from pipeline.analysis import similarity as module

    monkeypatch.setattr(module, "NUM_ITER_MAX", 3)
    rng = np.random.default_rng(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # POT also warns
        with pytest.raises(RuntimeError, match="did not converge"):
            emd(random_domain(rng, 40, 5), random_domain(rng, 40, 5))
