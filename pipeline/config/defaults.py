"""Every default the registries give, as one tree, and the ones each job resolves.

A job reads params.yaml's keys (tracked as params by both runners) and, where params.yaml is silent,
a registry's defaults. Those are tracked too, each one on its own, so that changing a default re-runs
exactly the jobs that used it, and adding a registry entry (with its defaults) re-runs none:

* ``finetune.<key>``: the training loop's keys (:data:`pipeline.config.settings.TRAIN_KEYS`);
* ``linear_probe.<key>``, ``linear_probe.<solver>.<key>``: the linear probe's options and its solvers'
  defaults (:mod:`pipeline.training.probes`);
* ``methods.<key>``: the method registry's keys (:data:`pipeline.methods.registry.KEYS`), for the
  parts a run uses (:func:`pipeline.methods.registry.used`);
* ``sources.<source>.<key>``: a dataset source's defaults (:data:`pipeline.data.sources.SOURCES`), e.g.
  how it stores images (``storage_size``, ``encoding``, ``jpeg_quality``);
* ``train_augment.<key>``: the training crop's (:data:`pipeline.data.sources.TRAIN_AUGMENT_DEFAULTS`).

Snakemake sees a job's defaults in its ``params``; DVC reads them from :data:`DEFAULTS_FILE`, which
``python -m pipeline export-dvc`` renders beside ``dvc.yaml`` (a test and DVC's ``check_params``
stage check it is current).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.config.load import lookup
from pipeline.config.settings import TRAIN_KEYS, method_config, named_keys
from pipeline.data.sources import SOURCES, TRAIN_AUGMENT_DEFAULTS
from pipeline.methods.registry import KEYS, used
from pipeline.training.probes import LBFGS, LBFGS_DEFAULTS, OPTION_DEFAULTS, SGD, SGD_DEFAULTS

DEFAULTS_FILE = "params.defaults.yaml"
HEADER = """\
# GENERATED from the registries' defaults; do not edit by hand (change a default where it is defined:
# pipeline/config/settings.py, pipeline/methods/registry.py, pipeline/data/sources/__init__.py).
# DVC tracks the defaults each job resolves from this file:  python -m pipeline export-dvc
"""


def defaults_tree() -> dict[str, Any]:
    """``{"finetune": {...}, "methods": {...}, "sources": {<source>: {...}}}``: every registry default."""
    return {"finetune": {k: v.default for k, v in TRAIN_KEYS.items()},
            "linear_probe": {**OPTION_DEFAULTS, LBFGS: LBFGS_DEFAULTS, SGD: SGD_DEFAULTS},
            "methods": {k: v.default for k, v in KEYS.items() if v.default is not None},
            "sources": {name: spec.defaults for name, spec in SOURCES.items() if spec.defaults},
            "train_augment": dict(TRAIN_AUGMENT_DEFAULTS)}


def _set_anywhere(cfg: Mapping, method: str, dataset: str) -> set[str]:
    """Training and method keys a run's params set at some level (the rest come from the defaults), but those
    its name spells (:func:`pipeline.config.settings.named_keys`; a grid sweeps only these): the name spells a
    value where it leaves the default, so what a name means depends on that default wherever the value is set."""
    levels = [cfg.get("finetune") or {}, cfg["datasets"][dataset].get("finetune") or {},
              method_config(cfg, method, dataset)]
    return {k for level in levels for k in level} - named_keys()


def run_defaults(cfg: Mapping, method: str, dataset: str, settings: Mapping) -> list[str]:
    """Dotted keys of the defaults tree a fine-tune resolves: the loop's keys and those of its parts
    (:func:`pipeline.methods.registry.used` of its resolved ``settings``) that its params leave unset, and
    those its name spells, always."""
    explicit = _set_anywhere(cfg, method, dataset)
    keys = [f"finetune.{k}" for k in TRAIN_KEYS if k not in explicit]
    part_keys = dict.fromkeys(k for part in used(settings) for k in part.keys)
    return keys + [f"methods.{k}" for k in part_keys if k not in explicit and KEYS[k].default is not None]


def lp_defaults(cfg: Mapping, dataset: str, read: Iterable[str] | None = None) -> list[str]:
    """Dotted keys of the linear probe's defaults (options and its solver's keys; of those ``read``) that the
    probe on ``dataset`` (``datasets.<dataset>.linear_probe``, else ``linear_probe``) leaves unset."""
    given = cfg["datasets"][dataset].get("linear_probe") or cfg.get("linear_probe") or {}
    solver = given.get("solver", LBFGS)
    solver_defaults = SGD_DEFAULTS if solver == SGD else LBFGS_DEFAULTS
    keys = [f"linear_probe.{k}" for k in OPTION_DEFAULTS if k not in given]
    keys += [f"linear_probe.{solver}.{k}" for k in solver_defaults if k not in given]
    return [k for k in keys if read is None or k.rsplit(".", 1)[1] in read]


def dataset_defaults(entry: Mapping, read: Iterable[str]) -> list[str]:
    """Dotted keys of the defaults tree a dataset entry resolves: its source's defaults of the keys ``read``
    that the entry leaves unset."""
    source = str(entry["source"])
    keys = []
    for key, value in SOURCES[source].defaults.items():
        if key not in read:
            continue
        if isinstance(value, dict):
            given = entry.get(key) or {}
            keys += [f"sources.{source}.{key}.{k}" for k in value if k not in given]
        elif key not in entry:
            keys.append(f"sources.{source}.{key}")
    return keys


def augment_defaults(entry: Mapping) -> list[str]:
    """Dotted keys of the training crop's defaults that a dataset entry's ``train_augment`` leaves unset."""
    given = entry.get("train_augment") or {}
    return [f"train_augment.{k}" for k in TRAIN_AUGMENT_DEFAULTS if k not in given]


def values(keys: list[str]) -> dict[str, Any]:
    """The defaults at dotted keys of the tree."""
    tree = defaults_tree()
    return {k: lookup(tree, k) for k in keys}
