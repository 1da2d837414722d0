"""Uniform and greedy model soups (Wortsman et al. 2022).

Ingredients share their initialisation (validated: the same ``init``; with ``init: random`` the
head is drawn from the seed, so runs of one seed start from the same weights), which is what makes
averaging them meaningful.

* Uniform soup: the mean of all ingredients.
* Greedy soup: sort the ingredients by ID-val accuracy; start from the best and add
  each next one only if the average's ID-val accuracy strictly increases
  (methods.md section 1.9). Selection never looks at test or OOD data.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from pipeline.evaluation.metrics import ALL_DOMAINS, read_tidy

log = logging.getLogger(__name__)
State = dict[str, torch.Tensor]


class RunningMean:
    """Mean of state dicts added one at a time (one accumulator, in float64 for long soups)."""

    def __init__(self, first: State):
        self.sum = {k: v.double() if v.is_floating_point() else v.clone() for k, v in first.items()}
        self.dtypes = {k: v.dtype for k, v in first.items()}
        self.count = 1

    def with_(self, other: State) -> RunningMean:
        """A new mean that also holds ``other`` (self is unchanged)."""
        out = RunningMean.__new__(RunningMean)
        out.sum = {k: v + other[k].double() if v.is_floating_point() else v for k, v in self.sum.items()}
        out.dtypes, out.count = self.dtypes, self.count + 1
        return out

    def state(self) -> State:
        # Integer buffers (BatchNorm counters) are taken from the first ingredient, not averaged.
        return {k: (v / self.count).to(self.dtypes[k]) if v.is_floating_point() else v.clone()
                for k, v in self.sum.items()}


def uniform_soup(states: Iterable[State]) -> State:
    """The plain mean of every ingredient (loaded one at a time if ``states`` is lazy)."""
    it = iter(states)
    mean = RunningMean(next(it))
    for s in it:
        mean = mean.with_(s)
    return mean.state()


def greedy_soup(states: Iterable[State], best_score: float, score: Callable[[State], float]
                ) -> tuple[State, list[bool], float]:
    """Greedy soup; returns the soup, which ingredients it kept, and its ID-val score.

    ``states`` must come best first; ``best_score`` is the first one's ID-val accuracy and
    ``score`` evaluates a candidate on ID val. At most three copies are alive at once.
    """
    it = iter(states)
    mean, best = RunningMean(next(it)), best_score
    kept = [True]
    for s in it:
        candidate = mean.with_(s)
        acc = score(candidate.state())
        kept.append(acc > best)          # strictly better, as in the paper
        if kept[-1]:
            mean, best = candidate, acc
    return mean.state(), kept, best


def id_val_accuracy(metrics_csv: str, val_split: str) -> float:
    df = read_tidy([metrics_csv])
    row = df[(df["split"] == val_split) & (df["domain"] == ALL_DOMAINS) & (df["metric"] == "acc")]
    if row.empty:
        raise ValueError(f"{metrics_csv}: no {val_split} accuracy to rank the ingredient by")
    return float(row["value"].iloc[0])
