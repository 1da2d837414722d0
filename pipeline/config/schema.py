"""The params.yaml schema: ``params.schema.yaml`` completed from the method registry and the training keys.

The YAML file holds the structure of params.yaml. What belongs to a method or to the training
loop is defined once in Python, next to its default, and filled in here: the ``init`` and
``optimizer`` enums and every component key (:mod:`pipeline.methods.registry`), the table layouts
(:mod:`pipeline.reporting.layouts`), the training
loop's keys (:data:`pipeline.config.settings.TRAIN_KEYS`, allowed under ``finetune``,
``datasets.<d>.finetune`` and ``methods.<m>``), and the keys a ``grid`` may sweep.
``python -m pipeline schema`` prints the result.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from pipeline.config.settings import TRAIN_KEYS, sweepable
from pipeline.methods.registry import INITS, KEYS, OPTIMIZERS
from pipeline.reporting.layouts import LAYOUTS

SCHEMA_PATH = Path(__file__).parent / "params.schema.yaml"


def _grid_of(item: dict) -> dict:
    return {"type": "array", "minItems": 1, "uniqueItems": True, "items": item}


@functools.cache
def _schema() -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    props = schema["properties"]
    train = {k: v.schema for k, v in TRAIN_KEYS.items()}
    props["finetune"]["properties"] = dict(train)
    props["datasets"]["additionalProperties"]["properties"]["finetune"]["properties"] = dict(train)
    method = props["methods"]["additionalProperties"]["properties"]
    method["init"] = {"enum": list(INITS)}
    method["optimizer"] = {"enum": list(OPTIMIZERS)}
    method.update(train)
    method.update({k: v.schema for k, v in KEYS.items()})
    method["grid"]["properties"].update({k: _grid_of(v.schema) for k, v in sweepable().items()})
    props["report"]["properties"]["tables"]["items"] = {"enum": list(LAYOUTS)}
    return schema


def full_schema() -> dict:
    """The completed JSON schema (a copy: safe to modify)."""
    return copy.deepcopy(_schema())


def schema_text() -> str:
    return yaml.safe_dump(_schema(), sort_keys=False, width=110)
