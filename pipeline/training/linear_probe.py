"""The linear probe's records: the C sweep as a table and the selected head's scores on every split.

The solvers are :mod:`pipeline.training.logistic` (methods.md section 1.1) and, the LP-FT code's ImageNet
probe, :mod:`pipeline.training.sgd_probe`; the ``linear_probe`` stage runs one on cached features and
writes the head, the sweep, the metrics and the predictions.
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.predict import Evaluation, score_logits
from pipeline.training.logistic import SweepResult
from pipeline.training.sgd_probe import ProbeResult

log = logging.getLogger(__name__)


def _table(result: SweepResult | ProbeResult, columns: dict[str, str]) -> pd.DataFrame:
    """One row per entry of ``result.rows`` (column -> attribute); ``selected`` marks the head that was saved."""
    table = pd.DataFrame({col: [getattr(r, attr) for r in result.rows] for col, attr in columns.items()})
    return table.assign(selected=[i == result.selected for i in range(len(result.rows))])


def sweep_table(result: SweepResult) -> pd.DataFrame:
    """The L-BFGS sweep: one row per C."""
    return _table(result, {"C": "C", "train_acc": "train_acc", "id_val_acc": "val_acc", "iterations": "iterations"})


def epoch_table(result: ProbeResult) -> pd.DataFrame:
    """The SGD probe: one row per epoch."""
    return _table(result, {"epoch": "epoch", "lr": "lr", "train_loss": "train_loss", "train_acc": "train_acc",
                           "id_val_acc": "val_acc"})


def probe_scores(result: SweepResult | ProbeResult, splits: dict, meta: dict, data: PreparedDataset) -> Evaluation:
    """Metric rows and predictions of the selected head on every split but train (aliases included)."""
    logits = {name: splits[data.physical(name)]["features"].float() @ result.weight.T + result.bias
              for name in data.split_names if data.physical(name) != meta["train_split"]}
    return score_logits(data, logits)
