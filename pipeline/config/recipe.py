"""Recipe cards: for each value a paper fixes, ours as the stages resolve it, the official one and its source.

A card is data, ``paper/recipes/<config>.yaml``, named by the config's ``report.recipe``::

    paper: "Wortsman et al. 2022, Robust fine-tuning of zero-shot models (WiSE-FT)"
    config: configs/wise_ft.yaml
    rows:
      - setting: methods.ft.lr            # where the value lives in our params
        dataset: imagenet                 # the context of settings that depend on it (and hp: a grid point)
        official: 3.0e-5
        source: "mlfoundations/wise-ft@58b7a4b:README.md:83"
        note: "..."                       # optional: what the key cannot say
        kept: "..."                       # a difference we keep, and why (the values then differ)

Our value is what the stages resolve (:func:`resolve`), never the raw YAML:

* ``methods.<m>.<key>`` (``dataset``, ``hp``): the run's settings, :func:`~pipeline.config.settings.resolve_settings`
  (training defaults < ``finetune`` < ``datasets.<d>.finetune`` < the method < ``datasets.<d>.methods.<m>``
  < the grid point), as the ``finetune`` stage resolves them; ``methods.<m>.grid`` is the method's grid on
  the dataset, ``methods.<m>.grid.<key>`` that key's value at each grid point;
* ``linear_probe.<key>`` (``dataset``): the probe the dataset uses, over its solver's defaults;
* ``datasets.<d>.<key>``: the entry over its source's defaults;
* ``wise_ft.select``, ``report.<key>``: over their defaults (the report's selection split and WiSE-FT rows);
  any other dotted key: its value as set (a card names only keys that are set or that a registry resolves).

Each row's status: ``same``; ``kept`` (a stated difference); ``differs`` (a difference nobody explained);
``stale`` (marked kept, but the values agree). ``tests/test_recipes.py`` requires every shipped card to be
``same`` or ``kept`` only.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.settings import (
    POINTS,
    WISE_FT_SELECT,
    grid_point,
    method_config,
    plain,
    probe_config,
    resolve_settings,
    run_points,
    swept_keys,
)
from pipeline.data.sources import SOURCES

ROW_KEYS = ("setting", "dataset", "hp", "official", "source", "note", "kept")
STATUSES = ("same", "kept", "differs", "stale")


class RecipeError(ValueError):
    """A card is malformed or names a setting the config cannot resolve; the message names the row."""


@dataclass(frozen=True)
class RecipeRow:
    setting: str
    official: Any
    source: str
    dataset: str | None = None
    hp: str | None = None
    note: str = ""
    kept: str = ""

    @property
    def where(self) -> str:
        """The setting with its context: ``methods.ft.lr (imagenet)``."""
        context = ", ".join(x for x in (self.dataset, self.hp) if x)
        return f"{self.setting} ({context})" if context else self.setting


@dataclass(frozen=True)
class Card:
    paper: str
    config: str
    rows: list[RecipeRow]


def load_card(path: str | Path) -> Card:
    """Read and check a card's format (not its settings: :func:`check_card` does, against a config)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read the recipe card ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paper"), str) or not isinstance(doc.get("rows"), list):
        raise RecipeError(f"{path}: needs 'paper' (text) and 'rows' (a list)")
    rows = []
    for i, r in enumerate(doc["rows"]):
        where = f"{path}: rows[{i}]"
        if not isinstance(r, dict):
            raise RecipeError(f"{where}: must be a mapping")
        unknown = sorted(set(r) - set(ROW_KEYS))
        if unknown:
            raise RecipeError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(ROW_KEYS)})")
        for key in ("setting", "source"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise RecipeError(f"{where}.{key}: required (non-empty text)")
        if "official" not in r:
            raise RecipeError(f"{where}.official: required (the official value)")
        for key in ("note", "kept"):
            if key in r and (not isinstance(r[key], str) or not r[key].strip()):
                raise RecipeError(f"{where}.{key}: must be non-empty text")
        rows.append(RecipeRow(r["setting"], r["official"], r["source"], r.get("dataset"), r.get("hp"),
                              r.get("note", ""), r.get("kept", "")))
    return Card(doc["paper"], str(doc.get("config", "")), rows)


def _source_defaults(source: str) -> dict[str, Any]:
    """A dataset source's defaults: the registry's (root, image size) and its module's own ``DEFAULTS``."""
    spec = SOURCES[source]
    module = importlib.import_module(spec.module)
    return {**spec.defaults, **plain(getattr(module, "DEFAULTS", {}))}


def _descend(value: Any, parts: list[str], setting: str) -> Any:
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"{setting}: not set, and no registry resolves it")
        value = value[part]
    return plain(value)


def resolve(cfg: Mapping, row: RecipeRow) -> Any:
    """Our value of ``row.setting`` as the stages resolve it (module docstring); KeyError if none."""
    parts = row.setting.split(".")
    head = parts[0]
    if head == "methods" and len(parts) >= 3:
        method, key = parts[1], parts[2]
        if method not in cfg["methods"]:
            raise KeyError(f"{row.setting}: no method {method!r}")
        if row.dataset is not None and row.dataset not in cfg["datasets"]:
            raise KeyError(f"{row.setting}: no dataset {row.dataset!r}")
        config = method_config(cfg, method, row.dataset)
        if key == "grid":
            points = run_points(cfg, method, row.dataset)
            if len(parts) == 3:
                grid = config.get("grid") or {}
                return plain(grid.get(POINTS, grid))
            return [p.get(parts[3]) for p in points.values()]
        if row.hp is None and key in swept_keys(config):
            raise KeyError(f"{row.setting}: swept by the grid on this dataset; name a grid point (hp) or use "
                           f"methods.{method}.grid.{key}")
        point = grid_point(cfg, method, row.hp, row.dataset) if row.hp is not None else {}
        return _descend(resolve_settings(cfg, method, point, row.dataset), parts[2:], row.setting)
    if head == "linear_probe":
        return _descend(probe_config(cfg, row.dataset), parts[1:], row.setting)
    if head == "datasets" and len(parts) >= 3 and parts[1] in cfg["datasets"]:
        entry = cfg["datasets"][parts[1]]
        return _descend({**_source_defaults(entry["source"]), **plain(entry)}, parts[2:], row.setting)
    if head == "wise_ft":
        return _descend({"select": WISE_FT_SELECT[0], **plain(cfg.get("wise_ft") or {})}, parts[1:], row.setting)
    if head == "report":
        from pipeline.reporting.aggregate import SELECTION_DEFAULTS, WISE_FT_ALPHA, WISE_FT_OPTIMAL

        defaults = {**SELECTION_DEFAULTS, "wise_ft_alpha": WISE_FT_ALPHA, "wise_ft_optimal": WISE_FT_OPTIMAL}
        return _descend({**defaults, **plain(cfg.get("report") or {})}, parts[1:], row.setting)
    return _descend(cfg, parts, row.setting)


def same(ours: Any, official: Any) -> bool:
    """Equal values: numbers to 1e-9 relative (a bool is not a number), lists and mappings element-wise."""
    if isinstance(ours, bool) or isinstance(official, bool):
        return isinstance(ours, bool) and isinstance(official, bool) and ours == official
    if isinstance(ours, int | float) and isinstance(official, int | float):
        return math.isclose(float(ours), float(official), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(ours, list | tuple) and isinstance(official, list | tuple):
        return len(ours) == len(official) and all(same(a, b) for a, b in zip(ours, official))
    if isinstance(ours, Mapping) and isinstance(official, Mapping):
        return set(ours) == set(official) and all(same(ours[k], official[k]) for k in ours)
    return ours == official


def status(ours: Any, row: RecipeRow) -> str:
    equal = same(ours, row.official)
    if row.kept:
        return "stale" if equal else "kept"
    return "same" if equal else "differs"


def card_rows(cfg: Mapping, card: Card) -> list[dict[str, Any]]:
    """Every row resolved: setting, context, ours, official, source, note, kept, status."""
    out = []
    for row in card.rows:
        ours = resolve(cfg, row)
        out.append({"setting": row.setting, "dataset": row.dataset, "hp": row.hp, "where": row.where,
                    "ours": ours, "official": plain(row.official), "source": row.source, "note": row.note,
                    "kept": row.kept, "status": status(ours, row)})
    return out


def check_card(cfg: Mapping, path: str | Path) -> Card:
    """The card at ``path``, every row resolvable against ``cfg`` (RecipeError naming the row otherwise)."""
    card = load_card(path)
    for i, row in enumerate(card.rows):
        try:
            resolve(cfg, row)
        except (KeyError, TypeError) as e:
            raise RecipeError(f"{path}: rows[{i}] {row.where}: {e.args[0] if e.args else e}") from None
    return card
