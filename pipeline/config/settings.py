"""A method's training settings and its hyperparameter grid.

Settings resolve as defaults < ``finetune`` < ``datasets.<dataset>.finetune`` < ``methods.<method>``
< one point of ``methods.<method>.grid``. The defaults are :data:`TRAIN_KEYS` (the training loop's
own keys, which the three levels may set) and every method key of the registry
(:data:`pipeline.methods.registry.KEYS`, which only a method or its grid may set). Every grid point
is its own run, at ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/`` where ``hp`` spells the
swept values (e.g. ``lr0.0003`` or ``lr0.0001_spd_lambda0.3``), so adding a value to a grid adds
runs and leaves the existing ones valid.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from pipeline.methods.registry import KEYS, Key, defaults

_POSITIVE_INT = {"type": "integer", "minimum": 1}
# The training loop's keys. Fine-tuning defaults, not timm's pretraining ones (no label
# smoothing, BatchNorm statistics frozen).
TRAIN_KEYS: dict[str, Key] = {
    "epochs": Key(4, _POSITIVE_INT, "training epochs", True),
    "batch_size": Key(64, _POSITIVE_INT, "global batch size (split over the GPUs)"),
    "warmup_epochs": Key(0.5, {"type": "number", "minimum": 0}, "linear warmup, then cosine decay to 0"),
    "label_smoothing": Key(0.0, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "label smoothing", True),
    "grad_clip": Key(0.0, {"type": "number", "minimum": 0}, "clip the gradient norm to this (0: off)"),
    "bn": Key("eval", {"enum": ["train", "eval"]}, "BatchNorm statistics: updated (train) or frozen (eval)"),
    # Data-parallel processes (GPUs) per run; > 1 launches torchrun + DDP.
    "gpus": Key(1, {"type": "integer", "minimum": 1, "maximum": 64}, "GPUs (DDP processes) per run"),
    # How the run uses its device (pipeline/training/runtime.py).
    "precision": Key("auto", {"enum": ["auto", "fp32", "bf16", "fp16"]},
                     "autocast precision; auto: bf16 on a CUDA device that supports it, fp32 elsewhere"),
    "channels_last": Key("auto", {"enum": ["auto", True, False]},
                         "channels-last memory format; auto: on for convolutional families on CUDA"),
    "compile": Key(False, {"type": "boolean"}, "torch.compile the model"),
    "accumulate": Key(1, _POSITIVE_INT, "micro-batches per optimizer step (the global batch is unchanged)"),
    "grad_checkpointing": Key(False, {"type": "boolean"}, "recompute activations in backward (timm models)"),
    "deterministic": Key(True, {"type": "boolean"}, "deterministic kernels; false lets cuDNN autotune"),
}
TRAIN_DEFAULTS: dict[str, Any] = {k: v.default for k, v in TRAIN_KEYS.items()}
DEFAULT_HP = "default"   # the run name of a method without a grid


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(method_cfg: Mapping) -> list[dict[str, Any]]:
    """Every combination of the method's grid, in a stable order ([{}] without a grid)."""
    grid = method_cfg.get("grid") or {}
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def hp_name(point: Mapping[str, Any]) -> str:
    """Path-safe name of a grid point: ``lr0.0003_spd_lambda0.3``; ``default`` for no grid."""
    return "_".join(f"{k}{_format(v)}" for k, v in point.items()) or DEFAULT_HP


def hp_names(method_cfg: Mapping) -> list[str]:
    return [hp_name(p) for p in grid_points(method_cfg)]


def grid_point(method_cfg: Mapping, hp: str) -> dict[str, Any]:
    """The grid point called ``hp``; a KeyError lists the valid names."""
    points = {hp_name(p): p for p in grid_points(method_cfg)}
    if hp not in points:
        raise KeyError(f"no grid point {hp!r}; this method's runs: {', '.join(points)}")
    return points[hp]


def plain(value: Any) -> Any:
    """A deep, plain copy (dicts and lists) of a config node or a params view."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return copy.copy(value)


def default_settings() -> dict[str, Any]:
    """Every training and method key's default (a fresh dict)."""
    return copy.deepcopy({**TRAIN_DEFAULTS, **defaults()})


def resolve_settings(cfg: Mapping, method: str, point: Mapping[str, Any], dataset: str | None = None) -> dict:
    """Resolved settings of ``method`` at grid point ``point`` (its values) on ``dataset``; a plain dict.

    ``cfg`` may be the whole config or a stage's params view: only ``finetune``,
    ``datasets.<dataset>.finetune`` and ``methods.<method>`` (without its grid) are read.
    ``effective_lr`` (Li et al. 2020: lr / (1 - momentum)) may stand in for ``lr`` with
    momentum optimizers, so a sweep can hold the effective step size fixed.
    """
    method_cfg = {k: plain(v) for k, v in cfg["methods"][method].items() if k != "grid"}
    per_dataset = plain(cfg["datasets"][dataset].get("finetune") or {}) if dataset else {}
    out = {**default_settings(), **plain(cfg.get("finetune") or {}), **per_dataset, **method_cfg, **plain(point)}
    if "effective_lr" in out:
        out["lr"] = float(out.pop("effective_lr")) * (1.0 - float(out["momentum"]))
    return out


def method_settings(cfg: Mapping, method: str, hp: str | None = None, dataset: str | None = None) -> dict:
    """Resolved settings of ``method`` at the grid point named ``hp`` (whole config; for the registry and tools)."""
    point = grid_point(cfg["methods"][method], hp) if hp is not None else {}
    return resolve_settings(cfg, method, point, dataset)


def sweepable() -> dict[str, Key]:
    """Keys a ``grid`` may sweep: ``lr`` is added by the schema."""
    return {k: v for k, v in {**TRAIN_KEYS, **KEYS}.items() if v.sweep}
