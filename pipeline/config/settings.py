"""A method's training settings and its hyperparameter grid.

Settings resolve as defaults < ``finetune`` < ``datasets.<dataset>.finetune`` < ``methods.<method>``
< ``datasets.<dataset>.methods.<method>`` < one point of the grid. The defaults are :data:`TRAIN_KEYS`
(the training loop's own keys, which every level may set) and every method key of the registry
(:data:`pipeline.methods.registry.KEYS`, which only a method, its per-dataset override or its grid may
set). Every grid point is its own run, at ``results/{dataset}/{model}/{method}/{hp}/seed{seed}/``.

A ``grid`` is either a product, ``{lr: [...], spd_lambda: [...]}`` (every combination), or an explicit
list of named points, ``{points: {model_1: {lr: ..., epochs: ...}, ...}}``: a random search such as the
model soups' is a list of settings, not a product. A product's run is named by its values
(:func:`run_name`: the keys a grid may sweep that leave their defaults, spelled exactly, e.g.
``epochs2_lr0.0003_spd_lambda0.3``), so the name depends only on the run's values: adding a value to a
grid adds runs, and turning a fixed value into a grid that holds it keeps its run. A named point is
named by you (its key under ``points``), as a search names its samples; its values are tracked as params.

``datasets.<dataset>.methods.<method>`` overrides a method on one dataset (e.g. the LP-FT code's own
learning-rate grids for ImageNet): its keys replace the method's, and its ``grid`` replaces the
method's grid as a whole (and the method's value of each key it sweeps). It may not change ``init``
or ``optimizer`` (the method stays the method).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

from pipeline.config.frozen import remember
from pipeline.methods.registry import KEYS, Key, defaults
from pipeline.training.probes import with_defaults

_POSITIVE_INT = {"type": "integer", "minimum": 1}
SELECT = ("best_id_val", "last")
SCHEDULES = ("cosine", "cosine_lr", "cosine_per_epoch", "multistep")
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
    # The papers' protocols (issue 19): which checkpoint a run keeps, the learning-rate schedule, mixing.
    "select": Key("best_id_val", {"enum": list(SELECT)},
                  "the checkpoint kept: best_id_val (the epoch with the best ID-val accuracy, ties to the earlier; "
                  "the initial weights are never a candidate, as in transfer_learning) or last (the final epoch, "
                  "as wise-ft and model-soups)"),
    "schedule": Key("cosine", {"enum": list(SCHEDULES)},
                    "cosine: per-step linear warmup from 0 then cosine to 0 (timm's CosineLRScheduler); cosine_lr: "
                    "wise-ft/model-soups' cosine_lr (warmup lr = base (step + 1) / warmup); cosine_per_epoch: "
                    "transfer_learning's CosineAnnealingLR(T_max=epochs) stepped once per epoch, no warmup; "
                    "multistep: the lr times milestone_factor at each of the milestones (epochs), as torch's "
                    "MultiStepLR (Li et al. 2020)"),
    "warmup_steps": Key(None, {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
                        "warmup length in optimizer steps (e.g. wise-ft's 500); null: warmup_epochs decides"),
    "mixup_alpha": Key(0.0, {"type": "number", "minimum": 0}, "mixup's Beta(alpha, alpha) (timm's Mixup); 0: off",
                       True),
    "cutmix_alpha": Key(0.0, {"type": "number", "minimum": 0}, "CutMix's Beta(alpha, alpha) (timm's Mixup); 0: off",
                        True),
    "mixup_prob": Key(1.0, {"type": "number", "minimum": 0, "maximum": 1},
                      "probability of mixing a batch (or element) when mixup or CutMix is on"),
    "mixup_switch_prob": Key(0.5, {"type": "number", "minimum": 0, "maximum": 1},
                             "probability of CutMix instead of mixup when both are on"),
    "mixup_mode": Key("batch", {"enum": ["batch", "pair", "elem"]},
                      "one mixing draw per batch, per pair of images or per image (timm's Mixup modes)"),
    "randaugment": Key(None, {"oneOf": [{"type": "string", "pattern": "^rand-"}, {"type": "null"}]},
                       "timm RandAugment config string, e.g. rand-m9-n2-mstd0.5 (parsed by timm; applied once the "
                       "loader runs per-image PIL transforms)", True),
    "milestones": Key([], {"type": "array", "uniqueItems": True, "items": _POSITIVE_INT},
                      "multistep: the epochs (increasing, each before the last) at whose start the lr drops"),
    "milestone_factor": Key(0.1, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                            "multistep: the factor the lr is multiplied by at each milestone"),
}
TRAIN_DEFAULTS: dict[str, Any] = {k: v.default for k, v in TRAIN_KEYS.items()}
POINTS = "points"        # grid: {points: {name: {key: value}}}, an explicit list of runs
# WiSE-FT's alpha choice (wise_ft.select), the default first: on ID val, or none (the fixed alpha).
WISE_FT_SELECT = ("id_val", "fixed")
HP_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"   # a run name (the hp wildcard: pipeline/stages/registry.py)


DEFAULT_HP = "default"   # the run name of a method whose named keys are all at their defaults
# Longest run name spelled out in full; a longer one keeps its first segments and ends in ``__`` and a hash
# of the whole name (a directory name must stay well below the file systems' 255 bytes).
NAME_LIMIT = 100
_HASH_MARK = "__"   # never in a spelled-out name: keys do not start or end with _, values hold no _
# Keys of a method entry that decide which runs exist, not how a run trains: its grid and the models and
# datasets it is limited to. They are never part of a run's settings nor tracked as its params, so growing
# a grid or a limit adds runs and leaves the others valid.
PLAN_KEYS = ("grid", "models", "datasets")


def named_keys() -> frozenset[str]:
    """Keys a run's name spells (when they leave their defaults): those a grid may sweep."""
    return frozenset(sweepable()) | {"lr"}


def format_value(value: Any) -> str:
    """Exact, path-safe spelling of a value: equal numbers spell alike (``1``, ``1.0``), different ones differ.

    A number that is an integer below 1e16 is written as one; any other float as its ``repr`` (the
    shortest string that reads back as the same float) with ``e+`` written ``e`` (``1e16``). A value
    that is not a number gets a hash.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        blob = json.dumps(value, sort_keys=True, default=str)
        return "x" + hashlib.sha256(blob.encode()).hexdigest()[:10]
    if not math.isfinite(value):
        return repr(float(value))
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    try:
        exact = float(value) == value   # a huge int a float holds exactly spells as that float
    except OverflowError:
        exact = False
    return repr(float(value)).replace("e+", "e") if exact else str(value)


def run_name(values: Mapping[str, Any]) -> str:
    """A run's name from its settings (before ``effective_lr`` becomes ``lr``): every named key
    (:func:`named_keys`) whose value leaves its default, sorted, e.g. ``epochs2_lr0.0003_spd_lambda0.3``.

    Only values decide it, never where they are set, so a method that turns its ``lr`` into a grid
    keeps the run at the old value. Injective: different values give different names; one longer
    than :data:`NAME_LIMIT` is cut at a segment and completed by a hash of the whole.
    """
    base = {**TRAIN_DEFAULTS, **defaults()}
    parts = [f"{k}{format_value(values[k])}" for k in sorted(named_keys() & set(values))
             if k not in base or values[k] != base[k]]
    name = "_".join(parts) or DEFAULT_HP
    if len(name) <= NAME_LIMIT:
        return name
    digest = _HASH_MARK + hashlib.sha256(name.encode()).hexdigest()[:12]
    kept = ""
    for part in parts:
        if len(kept) + len(part) + 1 + len(digest) > NAME_LIMIT:
            break
        kept = f"{kept}_{part}" if kept else part
    return kept + digest


def method_config(cfg: Mapping, method: str, dataset: str | None = None) -> dict[str, Any]:
    """``methods.<method>`` as it applies on ``dataset``: with ``datasets.<dataset>.methods.<method>`` over it.

    The override's keys replace the method's; its ``grid`` replaces the method's grid as a whole, and
    the method's own value of every key that grid sweeps.
    ``cfg`` may be the whole config or a stage's params view (the override is then read if declared).
    """
    base = dict(cfg["methods"][method].items())   # a params view yields its declared keys only
    if dataset is None:
        return base
    override = dict(((cfg["datasets"][dataset].get("methods") or {}).get(method) or {}).items())
    if "grid" in override:
        # the dataset's grid replaces the method's, and the method's own value of each key it sweeps
        for key in ["grid", *swept_keys(override)]:
            base.pop(key, None)
    return {**base, **override}


def is_named(method_cfg: Mapping) -> bool:
    """The method's grid is an explicit list of named points (``grid: {points: ...}``)."""
    return POINTS in (method_cfg.get("grid") or {})


def grid_points(method_cfg: Mapping) -> list[dict[str, Any]]:
    """Every point of the method's grid, in a stable order ([{}] without a grid)."""
    grid = method_cfg.get("grid") or {}
    if POINTS in grid:
        return [dict(point or {}) for point in grid[POINTS].values()]
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def swept_keys(method_cfg: Mapping) -> list[str]:
    """The keys the method's grid sets (in any of its points)."""
    grid = method_cfg.get("grid") or {}
    if POINTS in grid:
        return list(dict.fromkeys(k for point in grid[POINTS].values() for k in (point or {})))
    return list(grid)


def run_points(cfg: Mapping, method: str, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """``{run name: grid point}`` of ``method`` on ``dataset``, in grid order (built once per frozen config)."""
    def build() -> dict[str, dict[str, Any]]:
        method_cfg = method_config(cfg, method, dataset)
        if is_named(method_cfg):
            return {str(name): dict(point or {}) for name, point in method_cfg["grid"][POINTS].items()}
        out: dict[str, dict[str, Any]] = {}
        for point in grid_points(method_cfg):
            name = run_name(_layered(cfg, method, point, dataset))
            if name in out:   # cannot happen (run_name is injective); never let a run vanish silently
                raise ValueError(f"methods.{method}: grid points {out[name]} and {point} share the run name {name!r}")
            out[name] = point
        return out

    return remember(cfg, ("run_points", method, dataset), build)


def hp_names(cfg: Mapping, method: str, dataset: str | None = None) -> list[str]:
    """Run names of ``method``'s grid points on ``dataset``, in grid order."""
    return list(run_points(cfg, method, dataset))


def grid_point(cfg: Mapping, method: str, hp: str, dataset: str | None = None) -> dict[str, Any]:
    """The grid point called ``hp``; a KeyError lists the valid names."""
    points = run_points(cfg, method, dataset)
    if hp not in points:
        raise KeyError(f"no grid point {hp!r}; this method's runs: {', '.join(points)}")
    return dict(points[hp])


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
    ``datasets.<dataset>.finetune``, ``methods.<method>`` and ``datasets.<dataset>.methods.<method>``
    (without their grids) are read. ``effective_lr`` (Li et al. 2020: lr / (1 - momentum)) may stand
    in for ``lr`` with momentum optimizers, so a sweep can hold the effective step size fixed.
    """
    out = _layered(cfg, method, point, dataset)
    if "effective_lr" in out:
        out["lr"] = float(out.pop("effective_lr")) * (1.0 - float(out["momentum"]))
    return out


def _layered(cfg: Mapping, method: str, point: Mapping[str, Any], dataset: str | None) -> dict[str, Any]:
    """Defaults < ``finetune`` < ``datasets.<dataset>.finetune`` < the method (with its per-dataset override)
    < ``point``, as given."""
    method_cfg = {k: plain(v) for k, v in method_config(cfg, method, dataset).items() if k not in PLAN_KEYS}
    per_dataset = plain(cfg["datasets"][dataset].get("finetune") or {}) if dataset else {}
    return {**default_settings(), **plain(cfg.get("finetune") or {}), **per_dataset, **method_cfg, **plain(point)}


def method_settings(cfg: Mapping, method: str, hp: str | None = None, dataset: str | None = None) -> dict:
    """Resolved settings of ``method`` at the grid point named ``hp`` (whole config; for the registry and tools).

    On a frozen config (planning) each answer is computed once and shared: callers must not edit it.
    """
    def resolve() -> dict:
        point = grid_point(cfg, method, hp, dataset) if hp is not None else {}
        return resolve_settings(cfg, method, point, dataset)

    return remember(cfg, ("method_settings", method, hp, dataset), resolve)


def _own_probe(cfg: Mapping, dataset: str | None) -> Mapping | None:
    """``datasets.<dataset>.linear_probe`` when the dataset sets one (a presence test: through a params view
    it reads no key)."""
    ds = cfg["datasets"][dataset] if dataset is not None else {}
    return ds["linear_probe"] if "linear_probe" in ds and ds["linear_probe"] is not None else None


def probe_config(cfg: Mapping, dataset: str | None = None) -> dict[str, Any]:
    """The linear probe on ``dataset``, resolved: ``datasets.<dataset>.linear_probe`` when it sets one (it
    replaces ``linear_probe`` whole: another solver has other keys), else ``linear_probe``, over its
    solver's defaults (:mod:`pipeline.training.probes`)."""
    own = _own_probe(cfg, dataset)
    return with_defaults(plain(own if own is not None else cfg["linear_probe"]))


def probe_option(cfg: Mapping, dataset: str, key: str) -> Any:
    """One option of the probe on ``dataset`` (reading that key only: the features stage's ``train_augment``)."""
    own = _own_probe(cfg, dataset)
    probe = own if own is not None else cfg["linear_probe"]
    return probe[key] if key in probe else with_defaults({})[key]


def sweepable() -> dict[str, Key]:
    """Keys a ``grid`` may sweep: ``lr`` is added by the schema."""
    return {k: v for k, v in {**TRAIN_KEYS, **KEYS}.items() if v.sweep}


def runs_on(cfg: Mapping, method: str, dataset: str | None = None, model: str | None = None) -> bool:
    """Whether ``method`` has runs on ``dataset`` and ``model`` (None: any): ``methods.<m>.datasets`` and
    ``methods.<m>.models`` limit a method (e.g. to the one backbone a paper ran it with)."""
    entry = cfg["methods"][method]
    return all(value is None or entry.get(key) is None or value in entry[key]
               for key, value in (("datasets", dataset), ("models", model)))
