"""Load and validate ``params.yaml``; hash configs.

Validation happens before any job starts (the Snakefile calls :func:`load_params`
at parse time, and every stage's ``main`` calls it again, which is what guards
``dvc repro``). The schema is :mod:`pipeline.config.schema`; the checks that a schema
cannot express (cross references, keys of another optimizer) follow it. Errors are
one line that names the offending key, e.g.::

    params.yaml: methods.ft_adamw.lr: -0.1 must be > 0
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.schema import full_schema
from pipeline.config.settings import grid_points, resolve_settings
from pipeline.methods.registry import optimizer_only, owners
from pipeline.reporting.reference import ReferenceFileError, check_names, load_reference

DEFAULT_PARAMS = "params.yaml"


class ParamsError(ValueError):
    """A params.yaml problem; ``str(err)`` is a single line naming the key."""


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(err) -> str:
    """Turn a jsonschema error into `key: message` with the key spelled out."""
    key = _dotted(err.absolute_path)
    v, kind = err.validator, err.validator_value
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        where = f"{key}." if err.absolute_path else ""
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}{extra[0]}: unknown key{hint}"
    if v == "required":
        missing = [k for k in kind if k not in err.instance]
        return f"{key + '.' if err.absolute_path else ''}{missing[0]}: required key is missing"
    if v == "enum":
        return f"{key}: {err.instance!r} is not one of {', '.join(map(str, kind))}"
    if v == "exclusiveMinimum":
        return f"{key}: {err.instance!r} must be > {kind}"
    if v == "minimum":
        return f"{key}: {err.instance!r} must be >= {kind}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"{key}: {err.instance!r} must be {'<=' if v == 'maximum' else '<'} {kind}"
    if v == "type":
        return f"{key}: {err.instance!r} is not of type {kind}"
    if v == "propertyNames":
        return f"{key}: invalid name {err.instance!r}"
    return f"{key}: {err.message}"


def validate(cfg: Any, source: str = DEFAULT_PARAMS) -> dict:
    """Validate a parsed params mapping; raise :class:`ParamsError` on the first problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(full_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # The shallowest error is the most useful: an unknown top-level key beats its consequences.
        raise ParamsError(f"{source}: {_describe(errors[0])}")
    exp = cfg["experiment"]
    for section, listed in (("datasets", exp["datasets"]), ("models", exp["models"]), ("methods", exp["methods"])):
        for i, name in enumerate(listed):
            if name not in cfg[section]:
                raise ParamsError(f"{source}: experiment.{section}[{i}]: unknown {section[:-1]} {name!r} "
                                  f"(defined under {section}: {', '.join(sorted(cfg[section]))})")
    for name, ds in cfg["datasets"].items():
        _check_dataset(name, ds, source)
        for i, model in enumerate(ds.get("models") or []):
            if model not in exp["models"]:
                raise ParamsError(f"{source}: datasets.{name}.models[{i}]: {model!r} is not in experiment.models")
    lp = cfg["linear_probe"]
    if lp["C_min"] > lp["C_max"]:
        raise ParamsError(f"{source}: linear_probe.C_min: {lp['C_min']} is larger than C_max {lp['C_max']}")
    for name, m in cfg["methods"].items():
        _check_method(name, m, source)
    for name, m in cfg["models"].items():
        if ("timm_name" in m) == ("open_clip" in m):
            raise ParamsError(f"{source}: models.{name}: set timm_name (a timm model) or open_clip (an OpenCLIP "
                              "model), not both or neither")
        for key in ("config", "mean", "std"):
            if key in m and "timm_name" in m:
                raise ParamsError(f"{source}: models.{name}.{key}: only OpenCLIP models (open_clip) take it")
    for name in exp["methods"]:
        if cfg["methods"][name]["init"] == "zeroshot":
            for model in exp["models"]:
                if "open_clip" not in cfg["models"][model]:
                    raise ParamsError(f"{source}: methods.{name}.init: zeroshot needs a CLIP text tower, but "
                                      f"models.{model} is a timm model (name an OpenCLIP model: open_clip)")
    for dataset in cfg["experiment"]["datasets"]:
        for name in cfg["experiment"]["methods"]:
            _check_batches(cfg, dataset, name, source)
    for section in ("wise_ft", "soups"):
        for i, name in enumerate((cfg.get(section) or {}).get("methods", [])):
            if name not in exp["methods"]:
                raise ParamsError(f"{source}: {section}.methods[{i}]: {name!r} is not in experiment.methods")
    _check_report(cfg, source)
    soup = [m for m in (cfg.get("soups") or {}).get("methods", []) if m in cfg["methods"]]
    inits = {cfg["methods"][m]["init"] for m in soup}
    if len(inits) > 1:
        found = ", ".join(f"{m}: {cfg['methods'][m]['init']}" for m in soup)
        raise ParamsError(f"{source}: soups.methods: ingredients must share an initialisation, but their `init` "
                          f"values differ ({found})")
    return cfg


def _check_report(cfg: dict, source: str) -> None:
    report, exp = cfg.get("report") or {}, cfg["experiment"]
    base = report.get("baseline")
    if base is not None and base not in (*exp["methods"], "lp", "zeroshot"):
        raise ParamsError(f"{source}: report.baseline: {base!r} is not in experiment.methods (nor lp or zeroshot)")
    for name in report.get("quantities") or {}:
        if name not in exp["datasets"]:
            raise ParamsError(f"{source}: report.quantities.{name}: not in experiment.datasets")
    for i, path in enumerate(report.get("reference") or []):
        if not Path(path).is_file():
            raise ParamsError(f"{source}: report.reference[{i}]: {path} not found")
    try:
        check_names(load_reference(report.get("reference") or []), exp, "report.reference")
    except ReferenceFileError as e:
        raise ParamsError(f"{source}: {e}") from None
    alpha = report.get("wise_ft_alpha")
    alphas = (cfg.get("wise_ft") or {}).get("alphas") or []
    if alpha is not None and (cfg.get("wise_ft") or {}).get("methods", True) and alpha not in alphas:
        raise ParamsError(f"{source}: report.wise_ft_alpha: {alpha} is not in wise_ft.alphas {alphas}")


def _check_dataset(name: str, ds: dict, source: str) -> None:
    from pipeline.data.sources import COMMON_KEYS, SOURCES

    allowed = set(SOURCES[ds["source"]].keys) | set(COMMON_KEYS)
    for key in ds:
        if key not in allowed:
            raise ParamsError(f"{source}: datasets.{name}.{key}: not used by source {ds['source']} "
                              f"(its keys: {', '.join(sorted(allowed))})")
    if ds["source"] == "digits" and "build" not in ds:
        raise ParamsError(f"{source}: datasets.{name}.build: required key is missing")
    if ds["source"] == "domainnet" and ds.get("id_domain") in (ds.get("ood_domains") or []):
        raise ParamsError(f"{source}: datasets.{name}.ood_domains: contains the ID domain {ds['id_domain']!r}")


def _check_method(name: str, m: dict, source: str) -> None:
    grid = m.get("grid") or {}
    # A key only some optimizers read is a mistake under another one, not a no-op.
    for key in [*m, *grid]:
        readers = [c.name for c in owners(key)]
        if optimizer_only(key) and m["optimizer"] not in readers:
            where = f"methods.{name}.{'grid.' if key in grid else ''}{key}"
            raise ParamsError(f"{source}: {where}: not used by optimizer {m['optimizer']} "
                              f"(only by {', '.join(readers)})")
    for key in grid:
        if key in m:
            raise ParamsError(f"{source}: methods.{name}.{key}: also swept in methods.{name}.grid.{key}; keep one")
    rates = [k for k in ("lr", "effective_lr") if k in m or k in grid]
    if len(rates) != 1:
        problem = "set lr or effective_lr" if not rates else "set lr or effective_lr, not both"
        raise ParamsError(f"{source}: methods.{name}: {problem}")


def setting_key(cfg: dict, dataset: str, method: str, key: str) -> str:
    """The dotted key a run's setting comes from: the most specific level that sets it."""
    levels = [f"methods.{method}.grid.{key}", f"methods.{method}.{key}", f"datasets.{dataset}.finetune.{key}",
              f"finetune.{key}"]
    for dotted in levels:
        try:
            lookup(cfg, dotted)
            return dotted
        except (KeyError, TypeError):
            continue
    return f"finetune.{key} (default)"


def _check_batches(cfg: dict, dataset: str, method: str, source: str) -> None:
    """The global batch must split evenly over the GPUs and then over the micro-batches; warm-up must end."""
    for point in grid_points(cfg["methods"][method]):
        s = resolve_settings(cfg, method, point, dataset)
        if s["warmup_epochs"] >= s["epochs"]:
            raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'warmup_epochs')}: {s['warmup_epochs']} "
                              f"is not shorter than training ({s['epochs']} epochs; method {method}, dataset "
                              f"{dataset}): the learning rate would never leave the warm-up")
        if s["batch_size"] % (s["gpus"] * s["accumulate"]):
            raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'batch_size')}: {s['batch_size']} does "
                              f"not split into gpus x accumulate = {s['gpus']} x {s['accumulate']} equal "
                              f"micro-batches (method {method}, dataset {dataset})")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root or pass --params)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    return validate(cfg, str(path))


def lookup(cfg: dict, dotted: str) -> Any:
    """Value at a dotted key such as ``methods.ft_adamw``."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def config_hash(values: Any) -> str:
    """Short stable hash of JSON-able values (sorted keys), recorded in every result row."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
