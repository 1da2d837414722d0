"""Stage ``linear_probe``: L2 logistic regression on frozen features, C chosen on ID val.

Inputs: ``results/{dataset}/{model}/features.safetensors`` (:mod:`pipeline.models.features`) and
``data/prepared/{dataset}`` (split metadata, for the dataset's official metrics).
Outputs in ``results/{dataset}/{model}/lp/``:

* ``head.safetensors``: ``weight`` [K, D] and ``bias`` [K] (float32) of the
  selected C, for *raw* features (the scalar normalisation is folded in), so
  LP-FT and WiSE-FT load it straight into the classifier; metadata ``C``,
  ``config_hash``.
* ``sweep.csv``: per C (increasing) ``C, train_acc, id_val_acc, iterations,
  selected`` (the time each C took goes to the log: outputs hold no timings).
* ``metrics.csv``: tidy metric rows (:mod:`pipeline.evaluation.official`) of
  the selected head on every split except train, per domain, ``method=lp``;
* ``predictions.npz``: its per-example predictions (:mod:`pipeline.evaluation.predictions`).

Params: ``linear_probe`` (``C_min``, ``C_max``, ``num_C``, ``max_iter``). The
recipe is methods.md section 1.1; the solver is :mod:`pipeline.training.logistic`.
"""
from __future__ import annotations

import logging

import pandas as pd

from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predict import Evaluation, score_logits
from pipeline.evaluation.predictions import SINGLE, entry_ids, save_predictions
from pipeline.io import write_csv
from pipeline.job import parse_job
from pipeline.models.backbone import save_state
from pipeline.models.features import load_features
from pipeline.training.logistic import SweepResult, c_grid, sweep

log = logging.getLogger(__name__)


def sweep_table(result: SweepResult) -> pd.DataFrame:
    """One row per C; ``selected`` marks the head that was saved."""
    return pd.DataFrame({
        "C": [r.C for r in result.rows],
        "train_acc": [r.train_acc for r in result.rows],
        "id_val_acc": [r.val_acc for r in result.rows],
        "iterations": [r.iterations for r in result.rows],
        "selected": [i == result.selected for i in range(len(result.rows))],
    })


def probe_scores(result: SweepResult, splits: dict, meta: dict, data: PreparedDataset) -> Evaluation:
    """Metric rows and predictions of the selected head on every split but train (aliases included)."""
    logits = {name: splits[data.physical(name)]["features"].float() @ result.weight.T + result.bias
              for name in data.split_names if data.physical(name) != meta["train_split"]}
    return score_logits(data, logits)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("linear_probe", argv)
    wc, p = job.wildcards, job.params["linear_probe"]
    splits, meta = load_features(job.inputs["features"])
    train, val = splits[meta["train_split"]], splits[meta["val_split"]]
    result = sweep(train["features"], train["labels"], val["features"], val["labels"], meta["num_classes"],
                   c_grid(p["C_min"], p["C_max"], p["num_C"]), max_iter=int(p.get("max_iter", 100)))
    row = result.rows[result.selected]
    log.info("C=%.3g selected: train %.4f, %s %.4f; %d C values in %.2fs", row.C, row.train_acc,
             meta["val_split"], row.val_acc, len(result.rows), sum(r.seconds for r in result.rows))

    save_state({"weight": result.weight, "bias": result.bias}, job.outputs["head"],
               metadata={"C": repr(row.C), "config_hash": job.config_hash})
    write_csv(job.outputs["sweep"], sweep_table(result))
    scores = probe_scores(result, splits, meta, PreparedDataset(job.inputs["data"]))
    ids = entry_ids(wc["dataset"], wc["model"], "lp", f"C{row.C:.3g}", 0)
    save_predictions(job.outputs["predictions"], {SINGLE: (ids, scores.predictions)})
    write_csv(job.outputs["metrics"], tidy(scores.rows, **ids, config_hash=job.config_hash))
    return 0
