"""A method's training settings and its hyperparameter grid.

Settings resolve as built-in defaults < ``finetune`` < ``datasets.<dataset>.finetune``
< ``methods.<method>`` < one point of ``methods.<method>.grid``. Every grid point is its own run, at
``results/{dataset}/{model}/{method}/{hp}/seed{seed}/`` where ``hp`` spells the
swept values (e.g. ``lr0.0003`` or ``lr0.0001_spd_lambda0.3``), so adding a value
to a grid adds runs and leaves the existing ones valid.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

# Used when neither `finetune` nor the method sets a key. Fine-tuning defaults,
# not timm's pretraining ones (no label smoothing, no weight decay, BN frozen).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 4, "batch_size": 64, "warmup_epochs": 0.5, "label_smoothing": 0.0, "grad_clip": 0.0, "bn": "eval",
    # Data-parallel processes (GPUs) per run; > 1 launches torchrun + DDP. batch_size is the global batch.
    "gpus": 1,
    "weight_decay": 0.0, "momentum": 0.9, "betas": [0.9, 0.999], "freeze": "none",
    # AdamP/SGDP: the official package's defaults, set explicitly since timm's factory differs
    # (wd_ratio 0.01 and Nesterov on for adamp).
    "delta": 0.1, "wd_ratio": 0.1, "nesterov": False,
    # SPD: projection strength on the backbone; the new head gets its own (0: plain Adam).
    "spd_lambda": 0.0, "head_spd_lambda": 0.0,
    # L2-SP: (alpha/2)||theta_body - theta_0||^2 + (beta/2)||theta_head||^2.
    "l2sp_alpha": 0.0, "l2sp_beta": 0.0,
}
DEFAULT_HP = "default"   # the run name of a method without a grid


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(method_cfg: dict) -> list[dict[str, Any]]:
    """Every combination of the method's grid, in a stable order ([{}] without a grid)."""
    grid = method_cfg.get("grid") or {}
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def hp_name(point: dict[str, Any]) -> str:
    """Path-safe name of a grid point: ``lr0.0003_spd_lambda0.3``; ``default`` for no grid."""
    return "_".join(f"{k}{_format(v)}" for k, v in point.items()) or DEFAULT_HP


def hp_names(method_cfg: dict) -> list[str]:
    return [hp_name(p) for p in grid_points(method_cfg)]


def grid_point(method_cfg: dict, hp: str) -> dict[str, Any]:
    """The grid point called ``hp``; a KeyError lists the valid names."""
    points = {hp_name(p): p for p in grid_points(method_cfg)}
    if hp not in points:
        raise KeyError(f"no grid point {hp!r}; this method's runs: {', '.join(points)}")
    return points[hp]


def method_settings(cfg: dict, method: str, hp: str | None = None, dataset: str | None = None) -> dict:
    """Resolved settings of ``method`` at grid point ``hp`` on ``dataset`` (a deep copy; safe to modify).

    ``effective_lr`` (Li et al. 2020: lr / (1 - momentum)) may stand in for ``lr``
    with SGD-type optimizers, so a sweep can hold the effective step size fixed.
    """
    method_cfg = copy.deepcopy(cfg["methods"][method])
    point = grid_point(method_cfg, hp) if hp is not None else {}
    method_cfg.pop("grid", None)
    per_dataset = (cfg["datasets"].get(dataset) or {}).get("finetune", {}) if dataset else {}
    out = {**TRAIN_DEFAULTS, **copy.deepcopy(cfg.get("finetune", {})), **copy.deepcopy(per_dataset), **method_cfg,
           **point}
    if "effective_lr" in out:
        out["lr"] = float(out.pop("effective_lr")) * (1.0 - float(out["momentum"]))
    return out


def effective_lr(settings: dict) -> float | None:
    """lr / (1 - momentum) for SGD-type optimizers, recorded with every run; None for adaptive ones."""
    if settings["optimizer"] in ("sgd", "sgdp"):
        return float(settings["lr"]) / (1.0 - float(settings["momentum"]))
    return None
