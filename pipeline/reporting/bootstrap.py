"""95% intervals and paired comparisons of accuracies, bootstrapped with ``scipy.stats.bootstrap``.

A reported accuracy is a statistic of per-example correctness: the mean over a split, the
unweighted mean over a split's domains, a worst domain, an average over datasets. It is written
here as a tree (:class:`Stat`) whose leaves are ``[seeds x examples]`` boolean matrices; per seed
the tree is evaluated, and seeds are averaged, exactly as the tables average seeds.

The bootstrap resamples each leaf's examples independently (a stratified bootstrap: every
domain keeps its size) and, when there are several, the seeds (shared by all leaves, since one
run gives every leaf of a seed). scipy resamples each of its samples independently, so the
samples handed to it are index arrays: one for the seeds, one per leaf. Percentile intervals;
a fixed ``rng`` seed makes every interval the same on every run of the report.

A *paired* comparison evaluates two trees of the same shape (a method and the baseline) on the
same resampled seeds and examples and bootstraps their difference; it is significant when the
interval excludes zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

DEFAULTS = {"n_resamples": 1000, "confidence": 0.95, "seed": 0}
# Bound on the booleans gathered per batch of resamples (seeds x resamples x examples).
GATHER_BUDGET = 20_000_000


@dataclass
class Stat:
    """A statistic of per-example correctness: a leaf, or the mean / min of its children."""

    op: str = "leaf"                      # "leaf", "mean" or "min"
    correct: np.ndarray | None = None     # leaf: [seeds, examples] bool
    children: list[Stat] = field(default_factory=list)

    @staticmethod
    def leaf(correct: np.ndarray) -> Stat:
        return Stat("leaf", np.atleast_2d(np.asarray(correct, dtype=bool)))

    def leaves(self) -> list[Stat]:
        return [self] if self.op == "leaf" else [x for c in self.children for x in c.leaves()]

    @property
    def n_seeds(self) -> int:
        return self.leaves()[0].correct.shape[0]

    def per_seed(self, examples: list[np.ndarray]) -> np.ndarray:
        """``[batch, seeds]`` values given each leaf's resampled example indices ``[batch, n]``."""
        it = iter(examples)
        return self._eval(it)

    def _eval(self, it) -> np.ndarray:
        if self.op == "leaf":
            idx = next(it)
            return self.correct[:, idx].mean(-1).T       # [seeds, batch, n] -> [batch, seeds]
        vals = np.stack([c._eval(it) for c in self.children])
        return vals.mean(0) if self.op == "mean" else vals.min(0)

    def value(self) -> float:
        """The statistic on the data itself (mean over seeds)."""
        return float(self.per_seed([np.arange(x.correct.shape[1])[None] for x in self.leaves()]).mean())

    def repeat_seeds(self, n: int) -> Stat:
        """The same statistic with its single run used for each of ``n`` seeds (a deterministic LP or zero-shot)."""
        if self.op == "leaf":
            return Stat.leaf(np.repeat(self.correct, n, axis=0))
        return Stat(self.op, children=[c.repeat_seeds(n) for c in self.children])


def mean_of(stats_: list[Stat]) -> Stat:
    return stats_[0] if len(stats_) == 1 else Stat("mean", children=stats_)


def _bootstrap(stat_fn, leaves: list[Stat], n_seeds: int, cfg: dict) -> tuple[float, float]:
    cfg = {**DEFAULTS, **(cfg or {})}
    sizes = [x.correct.shape[1] for x in leaves]
    with_seeds = n_seeds > 1
    data = ([np.arange(n_seeds)] if with_seeds else []) + [np.arange(n) for n in sizes]

    def statistic(*samples, axis=-1):
        samples = [np.atleast_2d(s) for s in samples]
        seeds, examples = (samples[0], samples[1:]) if with_seeds else (None, samples)
        per_seed = stat_fn(examples)                                   # [batch, seeds]
        if seeds is None:
            return per_seed.mean(-1)
        return np.take_along_axis(per_seed, seeds, axis=1).mean(-1)

    batch = max(1, GATHER_BUDGET // max(1, n_seeds * sum(sizes)))
    res = stats.bootstrap(data, statistic, vectorized=True, paired=False, axis=-1,
                          n_resamples=int(cfg["n_resamples"]), confidence_level=float(cfg["confidence"]),
                          method="percentile", batch=batch, rng=np.random.default_rng(int(cfg["seed"])))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def interval(stat: Stat, cfg: dict | None = None) -> tuple[float, float]:
    """Bootstrap interval of a statistic (over examples, and over seeds when there are several)."""
    if any(x.correct.shape[1] < 2 for x in stat.leaves()):
        return math.nan, math.nan
    return _bootstrap(stat.per_seed, stat.leaves(), stat.n_seeds, cfg or {})


@dataclass(frozen=True)
class Comparison:
    delta: float        # method minus baseline (fraction)
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired(stat: Stat, baseline: Stat, cfg: dict | None = None) -> Comparison:
    """Difference ``stat - baseline`` on the same seeds and examples, with its bootstrap interval.

    The two must have the same shape: the same leaves (splits, domains) over the same examples,
    and the same seeds in the same order.
    """
    a, b = stat.leaves(), baseline.leaves()
    if [x.correct.shape for x in a] != [x.correct.shape for x in b]:
        raise ValueError("paired comparison of statistics over different seeds or examples")
    delta = stat.value() - baseline.value()
    if any(x.correct.shape[1] < 2 for x in a):
        return Comparison(delta, math.nan, math.nan)
    low, high = _bootstrap(lambda ex: stat.per_seed(ex) - baseline.per_seed(ex), a, stat.n_seeds, cfg or {})
    return Comparison(delta, low, high)
