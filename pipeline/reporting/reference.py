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
table's datasets. Only values verified in a primary source belong here (the file says which
source); a paper whose tables could not be verified ships a file with no tables and a note.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

AVERAGE = "average"
SIDES = ("id", "ood")


class ReferenceFileError(ValueError):
    """A reference file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Published:
    value: float     # accuracy in percent, as printed
    paper: str
    source: str


RefKey = tuple[str, str, str, str]   # dataset (or "average"), model, method, side


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
        if t.get("side") not in SIDES:
            raise ReferenceFileError(f"{where}: side must be one of {SIDES}, not {t.get('side')!r}")
        for model, methods in _mapping(t.get("values"), f"{where}.values").items():
            for method, datasets in _mapping(methods, f"{where}.values.{model}").items():
                for dataset, value in _mapping(datasets, f"{where}.values.{model}.{method}").items():
                    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
                        raise ReferenceFileError(f"{where}.values.{model}.{method}.{dataset}: {value!r} is not an "
                                             "accuracy in percent")
                    key = (str(dataset), str(model), str(method), t["side"])
                    if key in out:
                        raise ReferenceFileError(f"{where}.values.{model}.{method}.{dataset}: given twice")
                    out[key] = Published(float(value), doc["paper"], t["source"])
    return out


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise ReferenceFileError(f"{where}: must be a non-empty mapping")
    return value


def check_names(ref: dict[RefKey, Published], experiment: dict, source: str) -> None:
    """Every name in the reference must be one of the experiment's (a typo would silently show nothing).

    A dataset may be ``<dataset>/<domain>``: the value of one OOD domain (e.g. ``cifar10/stl10``).
    """
    known = {"dataset": set(experiment["datasets"]) | {AVERAGE}, "model": set(experiment["models"]),
             "method": set(experiment["methods"]) | {"lp", "zeroshot", "uniform_soup", "greedy_soup"}}
    for dataset, model, method, _side in ref:
        for kind, name in (("dataset", dataset.split("/", 1)[0]), ("model", model), ("method", method)):
            if name not in known[kind]:
                raise ReferenceFileError(f"{source}: {kind} {name!r} is not in the params "
                                     f"(known: {', '.join(sorted(known[kind]))})")
