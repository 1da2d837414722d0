"""The method registry: every optimizer, head initialisation, regulariser and parameter policy.

Pure data, cheap to import (the Snakefile, the params check and the report read it). An entry
names the module that implements it, the ``methods.<name>`` keys it reads, its display name and
its paper. :data:`KEYS` holds each key once: default, JSON schema, whether a grid may sweep it.
The params schema's enums and per-key schemas (:mod:`pipeline.config.schema`), the resolved
defaults (:mod:`pipeline.config.settings`), the finetune stage's assembly
(:mod:`pipeline.methods.assemble`) and the report's names all read this module, so a new
method is one module plus one entry here.

What an entry's module provides, by kind:

* ``optimizer`` (chosen by ``optimizer:``): ``build(groups, settings, device) -> Optimizer`` over
  the parameter groups of :mod:`pipeline.methods.param_groups`; optionally
  ``layer_stats(optimizer) -> {param name: {column: value}}`` for the columns it lists.
* ``init`` (chosen by ``init:``): ``init_head(model, inputs)`` and
  ``pretrained_head(inputs) -> {"weight", "bias"} | None``, the head WiSE-FT's theta_0 carries
  (None: the fine-tuned model's head is new, so it is kept, not interpolated). ``inputs`` are the
  job's input paths; the entry's ``inputs`` name the extra ones it needs as (stage, output).
* ``regulariser`` (consulted when a key of it leaves its default): ``build(model, settings, head) -> hook``;
  a hook has ``after_backward()``, called between the backward pass and gradient clipping.
* ``policy`` (consulted when a key of it leaves its default, in registry order):
  ``apply(model, settings, lr_scale) -> dict`` may freeze parameters (``requires_grad``) or scale
  their learning rate (multiply ``lr_scale[name]``), and returns facts to record with the run.

At the defaults of its keys, a regulariser or policy must be the identity (no hook; nothing frozen
or scaled): :func:`used` leaves it out, and a run depends only on the parts it uses.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

KINDS = ("optimizer", "init", "regulariser", "policy")

_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_MOMENTUM = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}


@dataclass(frozen=True)
class Key:
    """One ``methods.<name>`` key: its default (None: no default), schema, meaning, and if a grid may sweep it."""

    default: Any
    schema: dict
    doc: str
    sweep: bool = False


KEYS: dict[str, Key] = {
    "weight_decay": Key(0.0, _NONNEG, "weight decay; which tensors it reaches: weight_decay_scope", True),
    "weight_decay_scope": Key("groups", {"enum": ["groups", "all"]},
                              "groups: none on norms, biases and no_weight_decay() tensors (timm's groups); all: "
                              "every trainable tensor, as torch.optim.AdamW(params) in wise-ft and model-soups"),
    "momentum": Key(0.9, _MOMENTUM, "heavy-ball momentum", True),
    "effective_lr": Key(None, _POSITIVE, "lr / (1 - momentum) (Li et al. 2020), instead of lr", True),
    "betas": Key([0.9, 0.999], {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                                "minItems": 2, "maxItems": 2}, "Adam's moment coefficients"),
    "delta": Key(0.1, _POSITIVE, "AdamP/SGDP: cosine threshold of the scale-invariance test"),
    "wd_ratio": Key(0.1, _UNIT, "AdamP/SGDP: weight-decay factor of projected tensors", True),
    "nesterov": Key(False, {"type": "boolean"}, "AdamP/SGDP: Nesterov momentum"),
    "spd_lambda": Key(0.0, _UNIT, "SPD: projection strength on the backbone", True),
    "head_spd_lambda": Key(0.0, _UNIT, "SPD: projection strength on the new head (0: plain Adam)"),
    "l2sp_alpha": Key(0.0, _NONNEG, "L2-SP: (alpha/2)||theta_body - theta_0||^2", True),
    "l2sp_beta": Key(0.0, _NONNEG, "L2-SP: (beta/2)||theta_head||^2", True),
    "freeze": Key("none", {"oneOf": [{"enum": ["none", "patch_embed", "embed"]}, {"type": "integer", "minimum": 0}]},
                  "freeze the bottom layer groups: embed (= 2), patch_embed (= 1), none (= 0) or a number k"),
    "embed_lr_multiplier": Key(1.0, _POSITIVE, "learning-rate factor of the embedding layer groups", True),
    "layer_decay": Key(1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                       "layer-wise lr decay: layer i of L gets lr * layer_decay^(L-1-i) (timm's groups); 1: off",
                       True),
}


@dataclass(frozen=True)
class Component:
    """One registry entry; :meth:`load` imports its implementation."""

    kind: str
    name: str
    module: str
    label: str
    doc: str
    keys: tuple[str, ...] = ()
    paper: str = ""
    # init: extra job inputs it needs, {input name: (stage, output name)}.
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    # optimizer: per-parameter columns of layers.csv that its layer_stats() fills.
    layer_columns: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


_M = "pipeline.methods."
COMPONENTS: tuple[Component, ...] = (
    Component("optimizer", "adamw", _M + "adamw", "AdamW", "AdamW, timm's factory (fused on CUDA)",
              ("weight_decay", "weight_decay_scope", "betas")),
    Component("optimizer", "sgd", _M + "sgd", "SGD", "heavy-ball SGD, timm's factory",
              ("weight_decay", "weight_decay_scope", "momentum", "effective_lr"), "Li et al. 2020 (effective lr)"),
    Component("optimizer", "adamp", _M + "adamp", "AdamP", "AdamP with the official defaults",
              ("weight_decay", "weight_decay_scope", "betas", "delta", "wd_ratio", "nesterov"), "Heo et al. 2021"),
    Component("optimizer", "sgdp", _M + "sgdp", "SGDP", "SGDP with the official defaults",
              ("weight_decay", "weight_decay_scope", "momentum", "effective_lr", "delta", "wd_ratio", "nesterov"),
              "Heo et al. 2021"),
    Component("optimizer", "spd", _M + "spd", "Adam + SPD", "Adam with selective projection decay",
              ("betas", "spd_lambda", "head_spd_lambda"), "Tian et al. 2024", layer_columns=("spd_projected",)),
    Component("init", "random", _M + "init_random", "random head", "a fresh small head: N(0, 0.01^2), zero bias"),
    Component("init", "linear_default", _M + "init_linear", "random head (nn.Linear)",
              "a fresh head with nn.Linear's default init, U(+-1/sqrt(fan_in)) for weight and bias",
              (), "Kumar et al. 2022 (transfer_learning)"),
    Component("init", "lp", _M + "init_lp", "LP head", "the linear probe's head (LP-FT)", (),
              "Kumar et al. 2022", inputs={"lp_head": ("linear_probe", "head")}),
    Component("init", "zeroshot", _M + "init_zeroshot", "zero-shot head",
              "the CLIP text tower's class embeddings (OpenCLIP models)", (), "Wortsman et al. 2022",
              inputs={"zeroshot_head": ("zeroshot", "head")}),
    Component("regulariser", "l2sp", _M + "l2sp", "L2-SP", "pull the backbone toward its pretrained weights",
              ("l2sp_alpha", "l2sp_beta"), "Li et al. 2018"),
    Component("policy", "freeze", _M + "freeze", "freeze", "freeze the bottom layer groups (freeze-embed: 2)",
              ("freeze",), "Kumar et al. 2024"),
    Component("policy", "embed_lr", _M + "embed_lr", "embedding lr", "scale the embedding groups' learning rate",
              ("embed_lr_multiplier",), "Kumar et al. 2024 (ablation)"),
    Component("policy", "layer_decay", _M + "layer_decay", "layer decay", "layer-wise learning-rate decay (timm)",
              ("layer_decay",), "Clark et al. 2020; BEiT"),
)


def of_kind(kind: str) -> dict[str, Component]:
    """Entries of one kind by name, in registry order."""
    if kind not in KINDS:
        raise KeyError(f"unknown component kind {kind!r} (kinds: {', '.join(KINDS)})")
    return {c.name: c for c in COMPONENTS if c.kind == kind}


OPTIMIZERS = of_kind("optimizer")
INITS = of_kind("init")
REGULARISERS = of_kind("regulariser")
POLICIES = of_kind("policy")


def owners(key: str) -> list[Component]:
    """Entries that read ``key``."""
    return [c for c in COMPONENTS if key in c.keys]


def optimizer_only(key: str) -> bool:
    """True if only optimizers read ``key`` (so setting it under another optimizer is a mistake)."""
    found = owners(key)
    return bool(found) and all(c.kind == "optimizer" for c in found)


def defaults() -> dict[str, Any]:
    """Every key's default (keys without one, such as effective_lr, are left out)."""
    return {k: v.default for k, v in KEYS.items() if v.default is not None}


def label(kind: str, name: str) -> str:
    """Display name of an entry (the name itself if unknown, e.g. a run from an older registry)."""
    entry = of_kind(kind).get(name)
    return entry.label if entry else name


def switched_on(settings: Mapping[str, Any]) -> list[Component]:
    """The regularisers and policies whose keys leave their defaults, in registry order (at its defaults
    each is the identity, which ``tests/test_methods.py`` checks, so a run never depends on one it does
    not use)."""
    return [c for c in (*REGULARISERS.values(), *POLICIES.values())
            if any(settings[k] != KEYS[k].default for k in c.keys)]


def used(settings: Mapping[str, Any]) -> list[Component]:
    """The parts a run with these resolved settings loads: its optimizer, its head initialisation, and
    the regularisers and policies it switches on."""
    return [OPTIMIZERS[settings["optimizer"]], INITS[settings["init"]], *switched_on(settings)]


def layer_columns() -> tuple[str, ...]:
    """Every optional layers.csv column an optimizer may fill, in registry order."""
    return tuple(dict.fromkeys(c for o in OPTIMIZERS.values() for c in o.layer_columns))
