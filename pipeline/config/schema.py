"""The params.yaml schema: ``params.schema.yaml`` completed from the method registry and the training keys.

The YAML file holds the structure of params.yaml. What belongs to a method or to the training
loop is defined once in Python, next to its default, and filled in here: the ``init`` and
``optimizer`` enums and every component key (:mod:`pipeline.methods.registry`), the table layouts
(:mod:`pipeline.reporting.layouts`), the training
loop's keys (:data:`pipeline.config.settings.TRAIN_KEYS`, allowed under ``finetune``,
``datasets.<d>.finetune`` and ``methods.<m>``), the linear probe's options
(:data:`pipeline.training.probes.OPTION_KEYS`), the dataset sources (:mod:`pipeline.data.sources`),
and the keys a ``grid`` may sweep.
``python -m pipeline schema`` prints the result.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from pipeline.config.settings import DEFAULT_HP, HP_PATTERN, POINTS, TRAIN_KEYS, sweepable
from pipeline.data.sources import SOURCES
from pipeline.methods.registry import INITS, KEYS, OPTIMIZERS
from pipeline.reporting.layouts import LAYOUTS
from pipeline.training.probes import OPTION_KEYS

SCHEMA_PATH = Path(__file__).parent / "params.schema.yaml"


def _grid_of(item: dict) -> dict:
    return {"type": "array", "minItems": 1, "uniqueItems": True, "items": item}


@functools.cache
def _schema() -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    props = schema["properties"]
    train = {k: v.schema for k, v in TRAIN_KEYS.items()}
    props["finetune"]["properties"] = dict(train)
    dataset = props["datasets"]["additionalProperties"]["properties"]
    dataset["finetune"]["properties"] = dict(train)
    dataset["source"] = {"enum": list(SOURCES)}
    schema["$defs"]["linear_probe"]["properties"].update({k: v.schema for k, v in OPTION_KEYS.items()})
    for inference in ("features", "evaluate"):   # inference takes the training loop's precision setting
        props[inference]["properties"]["precision"] = TRAIN_KEYS["precision"].schema
    method = props["methods"]["additionalProperties"]["properties"]
    method["init"] = {"enum": list(INITS)}
    method["optimizer"] = {"enum": list(OPTIMIZERS)}
    method.update(train)
    method.update({k: v.schema for k, v in KEYS.items()})
    method["grid"]["properties"].update({k: _grid_of(v.schema) for k, v in sweepable().items()})
    point = {"lr": {"$ref": "#/$defs/positive_number"}, **{k: v.schema for k, v in sweepable().items()}}
    method["grid"]["properties"][POINTS] = {
        "type": "object", "minProperties": 1,
        "propertyNames": {"pattern": f"^(?!{DEFAULT_HP}$){HP_PATTERN[1:]}"},   # a run name, not "default"
        "additionalProperties": {"type": "object", "additionalProperties": False, "properties": point}}
    # datasets.<d>.methods.<m>: any method key but the method's identity (init, optimizer), none required
    dataset["methods"] = {"type": "object", "propertyNames": {"$ref": "#/$defs/name"}, "additionalProperties": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {k: v for k, v in method.items() if k not in ("init", "optimizer")}}}
    props["report"]["properties"]["tables"]["items"] = {"enum": list(LAYOUTS)}
    return schema


_VALIDATOR: list = [None, None]   # (the schema it was built from, the validator)


def validator():
    """A validator of the completed schema (:func:`strict_validator`), built once per schema: every params load
    (each Snakefile parse, each job's start) validates."""
    schema = _schema()
    if _VALIDATOR[0] is not schema:
        _VALIDATOR[:] = [schema, strict_validator()(schema)]
    return _VALIDATOR[1]


def strict_validator():
    """Draft 2020-12, except that an integer is an int: 2.0 validates as an integer there, then crashes a job."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def full_schema() -> dict:
    """The completed JSON schema (a copy: safe to modify)."""
    return copy.deepcopy(_schema())


def schema_text() -> str:
    return yaml.safe_dump(_schema(), sort_keys=False, width=110)
