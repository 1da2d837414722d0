"""Published numbers shipped as data (``paper/reference/*.yaml``), to set beside each result.

A file holds one paper's verified values, grouped into the tables they were read from::

    paper: Kumar et al. 2024                    # how the tables name it
    title: How to Fine-Tune Vision Models with SGD (ICLR 2024)
    tables:
      - source: "Table 2a (ID) ..."            # where every value of this group was read
        side: id                                # id or ood: the dataset's headline ID / OOD quantity
        values:                                 # model -> method -> dataset -> accuracy (%)
          clip_vit_b16:
            sgd: {living17: 97.8, waterbirds: 97.2, average: 90.0}

Names are the config's (its models, methods and datasets); ``average`` is the mean over the
table's datasets. A method name may be a table row's id, ``<method>/<kind>`` (e.g. ``ft/wise_ft_fixed``,
WiSE-FT at the fixed alpha; :data:`pipeline.reporting.aggregate.ROW_SUFFIX`), for the rows that share
a method. Only values verified in a primary source belong here (the file says which
source); a paper whose tables could not be verified ships a file with no tables and a note.

Two optional keys of a table say what its values are, for papers that print more than the accuracy
of each method's chosen grid point (Li et al. 2020, ``li2020.yaml``):

* ``quantity``: ``acc`` (default; accuracy in percent), ``error`` (top-1 error in percent, as printed),
  ``similarity`` (a domain similarity in (0, 1]; ``values`` then map model -> dataset, without a
  method level) or ``effective_lr`` (the effective learning rate of the chosen grid point, > 0);
* ``point``: the grid point the values were measured at, as settings (``{lr: 0.01, momentum: 0.9,
  weight_decay: 0.0001}``); without it a value is of the method's chosen grid point.

``side`` is required for ``acc`` and defaults to ``id`` for the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

AVERAGE = "average"
SIDES = ("id", "ood")
# quantity -> (lowest, highest, is the lowest allowed): the range of a printed value
QUANTITIES = {"acc": (0.0, 100.0, True), "error": (0.0, 100.0, True), "similarity": (0.0, 1.0, False),
              "effective_lr": (0.0, math.inf, False)}
NO_METHOD = ""   # the method of a value that belongs to no method (a domain similarity)


class ReferenceFileError(ValueError):
    """A reference file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Published:
    value: float     # as printed: accuracy or error in percent, a similarity, an effective lr
    paper: str
    source: str


class RefKey(NamedTuple):
    """What a published value is of; ``point``: sorted (setting, value) pairs, () for the chosen grid point."""

    dataset: str     # or "average"
    model: str
    method: str      # NO_METHOD for a similarity
    side: str
    quantity: str = "acc"
    point: tuple[tuple[str, float], ...] = ()


def point_key(point: dict | None) -> tuple[tuple[str, float], ...]:
    """A grid point's settings as a hashable key (values as floats)."""
    return tuple(sorted((str(k), float(v)) for k, v in (point or {}).items()))


def load_reference(paths: list[str]) -> dict[RefKey, Published]:
    """Every value of the given files, keyed by (dataset, model, method, side)."""
    out: dict[RefKey, Published] = {}
    for path in paths:
        for key, pub in _read(Path(path)).items():
            if key in out:
                raise ReferenceFileError(f"{path}: {'/'.join(key)} is also given by {out[key].paper}")
            out[key] = pub
    return out


def _read(path: Path) -> dict[RefKey, Published]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReferenceFileError(f"{path}: cannot read the reference file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("paper"), str):
        raise ReferenceFileError(f"{path}: needs a 'paper' name (and 'tables', possibly empty)")
    tables = doc.get("tables") or []
    if not isinstance(tables, list):
        raise ReferenceFileError(f"{path}: 'tables' must be a list")
    out: dict[RefKey, Published] = {}
    for i, t in enumerate(tables):
        where = f"{path}: tables[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("source"), str) or not t["source"].strip():
            raise ReferenceFileError(f"{where}: needs a non-empty 'source' (paper, table)")
        quantity = t.get("quantity", "acc")
        if quantity not in QUANTITIES:
            raise ReferenceFileError(f"{where}: quantity must be one of {tuple(QUANTITIES)}, not {quantity!r}")
        side = t.get("side", None if quantity == "acc" else "id")
        if side not in SIDES:
            raise ReferenceFileError(f"{where}: side must be one of {SIDES}, not {side!r}")
        point = t.get("point")
        if point is not None and (not isinstance(point, dict) or not point or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in point.values())):
            raise ReferenceFileError(f"{where}: point must map settings to numbers, not {point!r}")
        for model, values in _mapping(t.get("values"), f"{where}.values").items():
            methods = {NO_METHOD: values} if quantity == "similarity" else values
            for method, datasets in _mapping(methods, f"{where}.values.{model}").items():
                name = ".".join(x for x in (model, method) if x)
                for dataset, value in _mapping(datasets, f"{where}.values.{name}").items():
                    _check_value(value, quantity, f"{where}.values.{name}.{dataset}")
                    key = RefKey(str(dataset), str(model), str(method), side, quantity, point_key(point))
                    if key in out:
                        raise ReferenceFileError(f"{where}.values.{name}.{dataset}: given twice")
                    out[key] = Published(float(value), doc["paper"], t["source"])
    return out


def _check_value(value, quantity: str, where: str) -> None:
    low, high, closed = QUANTITIES[quantity]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value <= high and (
        value >= low if closed else value > low)
    if not ok:
        what = {"acc": "an accuracy in percent", "error": "an error in percent", "similarity": "a similarity in "
                "(0, 1]", "effective_lr": "an effective learning rate (> 0)"}[quantity]
        raise ReferenceFileError(f"{where}: {value!r} is not {what}")


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise ReferenceFileError(f"{where}: must be a non-empty mapping")
    return value


def check_names(ref: dict[RefKey, Published], experiment: dict, source: str) -> None:
    """Every name in the reference must be one of the experiment's (a typo would silently show nothing).

    A dataset may be ``<dataset>/<domain>``: the value of one OOD domain (e.g. ``cifar10/stl10``).
    """
    from pipeline.reporting.aggregate import ROW_SUFFIX

    known = {"dataset": set(experiment["datasets"]) | {AVERAGE}, "model": set(experiment["models"]),
             "method": set(experiment["methods"]) | {"lp", "zeroshot", "uniform_soup", "greedy_soup", NO_METHOD}}
    suffixes = {s for s in ROW_SUFFIX.values() if s}
    for key in ref:
        base, slash, kind = key.method.partition("/")
        if slash and f"/{kind}" not in suffixes:
            raise ReferenceFileError(f"{source}: row {key.method!r}: {kind!r} is not a row kind "
                                     f"(kinds: {', '.join(sorted(s[1:] for s in suffixes))})")
        for kind, name in (("dataset", key.dataset.split("/", 1)[0]), ("model", key.model), ("method", base)):
            if name not in known[kind]:
                raise ReferenceFileError(f"{source}: {kind} {name!r} is not in the params "
                                     f"(known: {', '.join(sorted(known[kind]))})")
