"""The per-example predictions behind the report's rows, found by their tidy ids.

Every evaluation stage saves a ``predictions.npz`` whose entries carry the ids of their metric
rows (:mod:`pipeline.evaluation.predictions`), so a table row's runs (one per seed: method, grid
point, seed and, for WiSE-FT, alpha) map to their predictions without any path convention.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import ALL_DOMAINS
from pipeline.evaluation.predictions import PredictionFile

Key = tuple[str, str, str, str, int, float | None]   # dataset, model, method, hp, seed, alpha


def make_key(dataset: str, model: str, method: str, hp: str, seed: int, alpha: float | None) -> Key:
    a = None if alpha is None or (isinstance(alpha, float) and math.isnan(alpha)) else round(float(alpha), 6)
    return (str(dataset), str(model), str(method), str(hp), int(seed), a)


class PredictionStore:
    """Index of every entry of the given files; arrays are read on demand."""

    OPEN_FILES = 32   # a sweep has thousands of files: keep a few open, not all

    def __init__(self, paths: Iterable[str]):
        self.index: dict[Key, tuple[str, str]] = {}
        self._open: dict[str, PredictionFile] = {}
        for path in paths:
            for e in PredictionFile(path).entries:
                key = make_key(e["dataset"], e["model"], e["method"], e["hp"], e["seed"], e["alpha"])
                self.index[key] = (path, e["entry"])

    def _file(self, path: str) -> PredictionFile:
        if path not in self._open:
            if len(self._open) >= self.OPEN_FILES:
                self._open.pop(next(iter(self._open)))
            self._open[path] = PredictionFile(path)
        return self._open[path]

    def __contains__(self, key: Key) -> bool:
        return key in self.index

    def _locate(self, key: Key) -> tuple[PredictionFile, str]:
        if key not in self.index:
            raise KeyError(f"no saved predictions for {'/'.join(map(str, key[:5]))}"
                           + (f" alpha {key[5]:g}" if key[5] is not None else "")
                           + ": re-run its evaluation stage (it writes predictions.npz)")
        path, entry = self.index[key]
        return self._file(path), entry

    def correct(self, key: Key, split: str, domain: str = ALL_DOMAINS) -> np.ndarray:
        """Per-example correctness of one run on a split, or on one domain of it."""
        f, entry = self._locate(key)
        correct = f.correct(entry, split)
        if domain == ALL_DOMAINS:
            return correct
        names, codes = f.domain_codes(split)
        hit = np.flatnonzero(names == domain)
        if not len(hit):
            raise KeyError(f"{f.path}: split {split} has no domain {domain!r} (has {list(names)})")
        return correct[codes == hit[0]]

    def domains(self, key: Key, split: str) -> list[str]:
        f, _ = self._locate(key)
        return [str(d) for d in f.domain_codes(split)[0]]


def check_consistent(rows: pd.DataFrame, store: PredictionStore, splits: tuple[str, ...], tol: float = 1e-6) -> None:
    """On the tables' splits, each run's saved predictions must give the accuracy its metrics.csv reports."""
    acc = rows[(rows["metric"] == "acc") & (rows["domain"] == ALL_DOMAINS) & rows["split"].isin(splits)]
    for r in acc.itertuples(index=False):
        key = make_key(r.dataset, r.model, r.method, r.hp, r.seed, r.alpha)
        got = float(store.correct(key, r.split).mean())
        if abs(got - float(r.value)) > tol + 0.5 / max(int(r.n), 1):
            raise ValueError(f"predictions of {'/'.join(map(str, key[:5]))} give {r.split} accuracy {got:.6f} but "
                             f"its metrics say {float(r.value):.6f}: re-run its evaluation stage")
