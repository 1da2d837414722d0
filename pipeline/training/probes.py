"""The linear probe's two solvers, the keys each reads and their defaults: pure data, no torch.

``linear_probe.solver`` (or a dataset's own ``datasets.<d>.linear_probe``) picks one:

* ``lbfgs`` (default): L2 logistic regression, C swept on a log grid (:mod:`pipeline.training.logistic`);
* ``sgd``: the LP-FT code's ImageNet probe, a linear layer trained by SGD (:mod:`pipeline.training.sgd_probe`).

The ``linear_probe`` stage, params validation and the recipe card read this module, so each default
is defined here once.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.methods.registry import Key

LBFGS, SGD = "lbfgs", "sgd"
SOLVERS = (LBFGS, SGD)
# lbfgs needs C_min, C_max and num_C (no defaults: the grid is the experiment's choice).
LBFGS_DEFAULTS: dict[str, Any] = {"max_iter": 100}
# The official ImageNet probe (AnanyaKumar/transfer_learning@13c3e2b): lr 0.1, 5 epochs and seed 0
# (scripts/run_adaptation_experiments.py:1616-1618, 1632-1638), batch 128 (configs/adaptation/imagenet.yaml:8),
# SGD momentum 0.9, no weight decay (configs/adaptation/resnet50_transfer.yaml:13-18), the best epoch on
# validation (ckp_best_val: unlabeled_extrapolation/baseline_train.py:687-698).
SGD_DEFAULTS: dict[str, Any] = {"lr": 0.1, "epochs": 5, "batch_size": 128, "momentum": 0.9, "weight_decay": 0.0,
                                "seed": 0, "select": "best_id_val"}
PROBE_KEYS: dict[str, tuple[str, ...]] = {LBFGS: ("C_min", "C_max", "num_C", *LBFGS_DEFAULTS), SGD: tuple(SGD_DEFAULTS)}
# Options of either solver (the features stage reads train_augment too).
OPTION_KEYS: dict[str, Key] = {
    "train_augment": Key(False, {"type": "boolean"},
                         "fit the probe on one augmented view of each train image (the dataset's train_augment, "
                         "drawn once with seed 0), as transfer_learning's LP for LP-FT; false: unaugmented"),
    "binary_C": Key("sklearn", {"enum": ["sklearn", "multinomial"]},
                    "two classes, lbfgs: C on scikit-learn's binary scale (one weight vector, as transfer_learning; "
                    "fit as the two-row softmax at C/2) or of the two-row softmax objective itself"),
}
OPTION_DEFAULTS: dict[str, Any] = {k: v.default for k, v in OPTION_KEYS.items()}


def with_defaults(probe: Mapping[str, Any]) -> dict[str, Any]:
    """A probe's keys (``solver`` default ``lbfgs``) over its solver's defaults and the options' defaults."""
    solver = probe.get("solver", LBFGS)
    return {"solver": solver, **OPTION_DEFAULTS, **(SGD_DEFAULTS if solver == SGD else LBFGS_DEFAULTS), **probe}
