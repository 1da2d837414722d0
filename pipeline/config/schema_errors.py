"""jsonschema's errors on params.yaml as one line that names the key: ``methods.spd.lr: -1 must be > 0``."""
from __future__ import annotations

from typing import Any

from pipeline.config.schema import full_schema
from pipeline.config.settings import DEFAULT_HP


def dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value (YAML's null, true, false), cut to ``limit`` characters (a message stays one line)."""
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    else:
        text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 5] + " ...>"


_TYPES = {"object": "a mapping", "array": "a list", "string": "text", "number": "a number", "integer": "an integer",
          "boolean": "true or false", "null": "null"}


def type_problem(value: Any, kind: Any) -> str:
    """Why ``value`` is not of JSON type ``kind``, with the fix when it is a known YAML slip."""
    kinds = kind if isinstance(kind, list) else [kind]
    if "integer" in kinds and isinstance(value, float) and value.is_integer():
        return f"{value!r} is not an integer (write {int(value)})"
    if {"number", "integer"} & set(kinds) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:   # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as text
            fix = "write it with a dot: 1.0e-4, not 1e-4" if "." not in value and "e" in value.lower() else \
                "remove the quotes"
            return f"{value!r} is text, not a number ({fix})"
    return f"{_short(value)} is not {' or '.join(_TYPES.get(k, k) for k in kinds)}"


def describe(err) -> str:
    """Turn a jsonschema error into `key: message` with the key spelled out."""
    key = dotted(err.absolute_path)
    if "propertyNames" in err.schema_path:   # a name under this mapping: the error's instance is the name
        return _name_problem(err.instance, key)
    if err.validator in ("additionalProperties", "required"):
        return _key_problem(err, key)
    return f"{key}: {_problem(err)}"


def _name_problem(name: Any, key: str) -> str:
    if not isinstance(name, str):
        return f"{key}: {_short(name)} is not a valid name"
    longest = full_schema()["$defs"]["name"]["maxLength"]
    if len(name) > longest:
        return (f"{key}.{name[:20]}...: a name of {len(name)} characters; at most {longest} (it becomes a folder "
                "and a file name)")
    if name == DEFAULT_HP:
        return f"{key}.{name}: invalid name: {DEFAULT_HP!r} is the name of a run with no grid (choose another)"
    return f"{key}.{name}: invalid name: use letters, digits and _, starting with a letter (it becomes a folder name)"


def _key_problem(err, key: str) -> str:
    """Errors about a mapping's keys name the key itself."""
    where = f"{key}." if err.absolute_path else ""
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}{extra[0]}: unknown key{hint}"
    missing = [k for k in err.validator_value if k not in err.instance]
    return f"{where}{missing[0]}: required key is missing"


_BOUNDS = {"exclusiveMinimum": ">", "minimum": ">=", "maximum": "<=", "exclusiveMaximum": "<"}


def _problem(err) -> str:
    """The message of a jsonschema error on a value, without its key."""
    v, kind, inst = err.validator, err.validator_value, err.instance
    if v in _BOUNDS:
        return f"{_short(inst)} must be {_BOUNDS[v]} {kind}"
    if v == "type":
        return type_problem(inst, kind)
    if v in ("oneOf", "anyOf"):
        forms = list(dict.fromkeys(_problem(e) for e in err.context or [] if not e.relative_path))
        return f"{_short(inst)} fits none of the allowed forms ({'; '.join(forms)})" if forms else err.message
    if v in ("minItems", "maxItems", "maxLength"):
        unit = "characters" if v == "maxLength" else "items"
        return f"{len(inst)} {unit}, {'at least' if v == 'minItems' else 'at most'} {kind}"
    if v == "enum":
        return f"{_short(inst)} is not one of {', '.join(map(str, kind))}"
    if v == "pattern":
        return f"{_short(inst)} does not match {kind}"
    if v == "uniqueItems":
        return f"{_short(inst)} holds a value twice"
    if v == "minProperties":
        return f"is empty: set at least {kind} key{'s' if kind > 1 else ''}"
    return " ".join(_short(err.message, 200).split())
