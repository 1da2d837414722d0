"""Stage ``linear_probe``: a linear head on frozen features, chosen on ID val.

Two solvers (``linear_probe.solver``; a dataset may set its own probe, ``datasets.<d>.linear_probe``):

* ``lbfgs`` (default): L2 logistic regression with C swept on a log grid, warm-started L-BFGS
  (:mod:`pipeline.training.logistic`; the recipe is methods.md section 1.1);
* ``sgd``: the LP-FT code's ImageNet probe, a linear layer trained by SGD for a few epochs with a
  per-epoch cosine, the best epoch on ID val (:mod:`pipeline.training.sgd_probe`).

Inputs: ``results/{dataset}/{model}/features.safetensors`` (:mod:`pipeline.models.features`) and
``data/prepared/{dataset}`` (split metadata, for the dataset's official metrics).
Outputs in ``results/{dataset}/{model}/lp/``:

* ``head.safetensors``: ``weight`` [K, D] and ``bias`` [K] (float32) of the
  selected C (or epoch), for *raw* features (lbfgs folds its scalar normalisation in), so
  LP-FT and WiSE-FT load it straight into the classifier; metadata ``C`` (or ``epoch``),
  ``config_hash``.
* ``sweep.csv``: lbfgs: per C (increasing) ``C, train_acc, id_val_acc, iterations,
  selected``; sgd: per epoch ``epoch, lr, train_loss, train_acc, id_val_acc, selected``
  (the time each took goes to the log: outputs hold no timings).
* ``metrics.csv``: tidy metric rows (:mod:`pipeline.evaluation.official`) of
  the selected head on every split except train, per domain, ``method=lp``;
* ``predictions.npz``: its per-example predictions (:mod:`pipeline.evaluation.predictions`).

Params: ``linear_probe`` or ``datasets.{dataset}.linear_probe`` (lbfgs: ``C_min``, ``C_max``,
``num_C``, ``max_iter``; sgd: ``lr``, ``epochs``, ``batch_size``, ``momentum``, ``weight_decay``,
``seed``, ``select``; either: ``train_augment``, fit on the train split's augmented view, which the
features stage then writes; ``binary_C``, lbfgs's scale of C for two classes, scikit-learn's by
default). The recipe is methods.md section 1.1; the solvers are :mod:`pipeline.training.logistic` and
:mod:`pipeline.training.sgd_probe`. One probe per (dataset, model), shared by every seed's LP-FT
(transfer_learning fits one per seed, each on its own random view).
"""
from __future__ import annotations

import logging

from pipeline.config.settings import probe_config
from pipeline.data.shards import PreparedDataset
from pipeline.evaluation.metrics import tidy
from pipeline.evaluation.predictions import SINGLE, entry_ids, save_predictions
from pipeline.io import write_csv
from pipeline.models.backbone import save_state
from pipeline.models.features import AUGMENTED, load_features
from pipeline.stages.job import parse_job
from pipeline.training.linear_probe import epoch_table, probe_scores, sweep_table
from pipeline.training.logistic import c_grid, sweep
from pipeline.training.probes import PROBE_KEYS, SGD
from pipeline.training.sgd_probe import train_probe

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("linear_probe", argv)
    wc = job.wildcards
    p = probe_config(job.params, wc["dataset"])
    data = PreparedDataset(job.inputs["data"])   # checked first: altered data stops the job before any output
    splits, meta = load_features(job.inputs["features"])
    train, val = splits[meta["train_split"]], splits[meta["val_split"]]
    x_train = train["features"]
    if p["train_augment"]:
        if AUGMENTED not in train:
            raise ValueError(f"{job.inputs['features']} has no augmented train view; re-run the features stage "
                             "(it writes one when linear_probe.train_augment is true)")
        x_train = train[AUGMENTED]
    args = (x_train, train["labels"], val["features"], val["labels"], meta["num_classes"])
    if p["solver"] == SGD:
        result = train_probe(*args, **{k: p[k] for k in PROBE_KEYS[SGD]})
        row = result.rows[result.selected]
        hp, chosen, table = f"epoch{row.epoch}", {"epoch": str(row.epoch)}, epoch_table(result)
        log.info("epoch %d selected (%s): train %.4f, %s %.4f; %d epochs in %.2fs", row.epoch,
                 p["select"], row.train_acc, meta["val_split"], row.val_acc, len(result.rows),
                 sum(r.seconds for r in result.rows))
    else:
        result = sweep(*args, c_grid(p["C_min"], p["C_max"], p["num_C"]), max_iter=int(p["max_iter"]),
                       binary_C=p["binary_C"])
        row = result.rows[result.selected]
        hp, chosen, table = f"C{row.C:.3g}", {"C": repr(row.C)}, sweep_table(result)
        log.info("C=%.3g selected: train %.4f, %s %.4f; %d C values in %.2fs", row.C, row.train_acc,
                 meta["val_split"], row.val_acc, len(result.rows), sum(r.seconds for r in result.rows))

    save_state({"weight": result.weight, "bias": result.bias}, job.outputs["head"],
               metadata={**chosen, "config_hash": job.config_hash})
    write_csv(job.outputs["sweep"], table)
    scores = probe_scores(result, splits, meta, data)
    ids = entry_ids(wc["dataset"], wc["model"], "lp", hp, 0)
    save_predictions(job.outputs["predictions"], {SINGLE: (ids, scores.predictions)})
    write_csv(job.outputs["metrics"], tidy(scores.rows, **ids, config_hash=job.config_hash))
    return 0
