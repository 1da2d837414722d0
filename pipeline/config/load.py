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
import math
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.recipe import RecipeError, check_card
from pipeline.config.schema import full_schema, validator
from pipeline.config.schema_errors import describe, dotted, type_problem
from pipeline.config.settings import (
    POINTS,
    WISE_FT_SELECT,
    grid_points,
    method_config,
    probe_config,
    resolve_settings,
    run_points,
    runs_on,
    swept_keys,
)
from pipeline.config.yaml_reader import YAMLShapeError, read_yaml_file
from pipeline.methods.registry import optimizer_only, owners
from pipeline.reporting.reference import ReferenceFileError, check_names, load_reference
from pipeline.training.probes import LBFGS, PROBE_KEYS

DEFAULT_PARAMS = "params.yaml"


class ParamsError(ValueError):
    """A params.yaml problem; ``str(err)`` is a single line naming the key."""


def _non_finite(node: Any, path: tuple = ()) -> str | None:
    """The first value that is .nan or .inf (every number must be finite), as `key: problem`."""
    if isinstance(node, float) and not math.isfinite(node):
        return f"{dotted(path)}: {node!r} is not a finite number"
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        if (found := _non_finite(v, (*path, k))) is not None:
            return found
    return None


def validate(cfg: Any, source: str = DEFAULT_PARAMS) -> dict:
    """Validate a parsed params mapping; raise :class:`ParamsError` on the first problem."""
    if not isinstance(cfg, dict):
        raise ParamsError(f"{source}: {'empty' if cfg is None else type_problem(cfg, 'object')}: a params file is "
                          f"a mapping of sections ({', '.join(full_schema()['required'])})")
    if (found := _non_finite(cfg)) is not None:
        raise ParamsError(f"{source}: {found}")
    sections = cfg.get("datasets") if isinstance(cfg.get("datasets"), dict) else {}
    for name, ds in sections.items():
        if isinstance(ds, dict) and "image_size" in ds:
            raise ParamsError(f"{source}: datasets.{name}.image_size: renamed storage_size (the shorter side images "
                              "are stored at, aspect kept); a model's input size is models.<m>.input_size (default: "
                              "its pretrained config)")
    errors = sorted(validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # The shallowest error is the most useful: an unknown top-level key beats its consequences.
        raise ParamsError(f"{source}: {describe(errors[0])}")
    _check_paths(cfg, source)
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
    _check_probe(cfg["linear_probe"], "linear_probe", source)
    for name, ds in cfg["datasets"].items():
        if ds.get("linear_probe"):
            _check_probe(ds["linear_probe"], f"datasets.{name}.linear_probe", source)
    for name, m in cfg["methods"].items():
        _check_method(name, m, source)
        _check_limits(cfg, name, source)
    _check_overrides(cfg, source)
    for name, m in cfg["models"].items():
        if ("timm_name" in m) == ("open_clip" in m):
            raise ParamsError(f"{source}: models.{name}: set timm_name (a timm model) or open_clip (an OpenCLIP "
                              "model), not both or neither")
        for key in ("config", "normalize_features"):
            if key in m and "timm_name" in m:
                raise ParamsError(f"{source}: models.{name}.{key}: only OpenCLIP models (open_clip) take it")
        if "head" in m and "open_clip" in m:
            raise ParamsError(f"{source}: models.{name}.head: only timm models take it (an OpenCLIP classifier "
                              "always keeps CLIP's projection and adds its head on top)")
    for name in exp["methods"]:
        if cfg["methods"][name]["init"] == "zeroshot":
            for model in (m for m in exp["models"] if runs_on(cfg, name, model=m)):
                if "open_clip" not in cfg["models"][model]:
                    raise ParamsError(f"{source}: methods.{name}.init: zeroshot needs a CLIP text tower, but "
                                      f"models.{model} is a timm model (name an OpenCLIP model: open_clip)")
                if cfg["models"][model].get("normalize_features") is False:
                    raise ParamsError(f"{source}: models.{model}.normalize_features: false, but methods.{name} "
                                      "starts from the zero-shot head, which is built for unit image features")
    for dataset in cfg["experiment"]["datasets"]:
        for name in cfg["experiment"]["methods"]:
            if not runs_on(cfg, name, dataset):
                continue
            for point in grid_points(method_config(cfg, name, dataset)):
                settings = resolve_settings(cfg, name, point, dataset)
                _check_batches(cfg, dataset, name, settings, source)
                _check_protocol(cfg, dataset, name, settings, source)
                _check_schedule(cfg, dataset, name, settings, source)
    for section in ("wise_ft", "soups"):
        for i, name in enumerate((cfg.get(section) or {}).get("methods", [])):
            if name not in exp["methods"]:
                raise ParamsError(f"{source}: {section}.methods[{i}]: {name!r} is not in experiment.methods")
    _check_report(cfg, source)
    _check_not_held_out(cfg, source)
    similarity = (cfg.get("analysis") or {}).get("similarity")
    if similarity is not None and similarity["source"] not in cfg["datasets"]:
        raise ParamsError(f"{source}: analysis.similarity.source: {similarity['source']!r} is not a dataset under "
                          f"datasets (defined: {', '.join(sorted(cfg['datasets']))})")
    soup = [m for m in (cfg.get("soups") or {}).get("methods", []) if m in cfg["methods"]]
    inits = {cfg["methods"][m]["init"] for m in soup}
    if len(inits) > 1:
        found = ", ".join(f"{m}: {cfg['methods'][m]['init']}" for m in soup)
        raise ParamsError(f"{source}: soups.methods: ingredients must share an initialisation, but their `init` "
                          f"values differ ({found})")
    if (cfg.get("soups") or {}).get("include_lp") and inits - {"lp"}:
        raise ParamsError(f"{source}: soups.include_lp: the LP model is the ingredients' shared start only when "
                          f"they start from it (init: lp), but soups.methods start from {', '.join(sorted(inits))}")
    return cfg


def _check_not_held_out(cfg: dict, source: str) -> None:
    """A dataset that trains on its ID-val images (``id_val_held_out: false``, WiSE-FT's 100% of ImageNet)
    may not choose anything on them: one grid point, a fixed WiSE-FT alpha, no soups, a linear probe that
    chooses nothing, the last epoch (``select``, the training loop's key)."""
    exp = cfg["experiment"]
    for d in exp["datasets"]:
        ds = cfg["datasets"][d]
        if ds.get("id_val_held_out", True):
            continue
        why = f"datasets.{d} trains on its ID-val images (id_val_held_out: false)"
        points = {m: run_points(cfg, m, d) for m in exp["methods"]}
        for m, pts in points.items():
            if len(pts) > 1:
                where = f"datasets.{d}.methods.{m}.grid" if "grid" in (ds.get("methods") or {}).get(m, {}) \
                    else f"methods.{m}.grid"
                raise ParamsError(f"{source}: {where}: {len(pts)} grid points would be chosen on ID val, but {why}; "
                                  "give one point")
        wise = cfg.get("wise_ft") or {}
        if wise.get("methods", True) and wise.get("select", WISE_FT_SELECT[0]) != "fixed":
            raise ParamsError(f"{source}: wise_ft.select: {wise.get('select', WISE_FT_SELECT[0])} chooses alpha on ID "
                              f"val, but {why}; set wise_ft.select: fixed (alpha report.wise_ft_alpha, and "
                              "report.wise_ft_optimal for the paper's oracle row)")
        if (cfg.get("soups") or {}).get("methods"):
            raise ParamsError(f"{source}: soups.methods: the greedy soup chooses its ingredients on ID val, but {why}")
        lp = probe_config(cfg, d)
        where = f"datasets.{d}.linear_probe" if ds.get("linear_probe") else "linear_probe"
        if lp["solver"] == LBFGS and int(lp["num_C"]) > 1:
            raise ParamsError(f"{source}: {where}.num_C: {lp['num_C']} values of C would be chosen on ID val, but "
                              f"{why}; set num_C: 1 (C_min = C_max: one fixed C)")
        if lp["solver"] != LBFGS and lp.get("select") != "last":
            raise ParamsError(f"{source}: {where}.select: {lp.get('select', 'the default')} picks the epoch on ID "
                              f"val, but {why}; set select: last")
        for m, pts in points.items():
            chosen = resolve_settings(cfg, m, next(iter(pts.values())), d).get("select")
            if chosen != "last":
                raise ParamsError(f"{source}: {setting_key(cfg, d, m, 'select')}: {chosen or 'the default'} picks the "
                                  f"checkpoint on ID val, but {why}; set select: last")


def _check_probe(lp: dict, where: str, source: str) -> None:
    """A probe's keys are its solver's: the C grid for lbfgs (required), the SGD settings for sgd."""
    solver = lp.get("solver", LBFGS)
    for key in lp:
        for other, keys in PROBE_KEYS.items():
            if other != solver and key in keys and key not in PROBE_KEYS[solver]:
                raise ParamsError(f"{source}: {where}.{key}: not used by solver {solver} (only by {other})")
    if solver == LBFGS:
        for key in ("C_min", "C_max", "num_C"):
            if key not in lp:
                raise ParamsError(f"{source}: {where}.{key}: required key is missing (solver lbfgs)")
        if lp["C_min"] > lp["C_max"]:
            raise ParamsError(f"{source}: {where}.C_min: {lp['C_min']} is larger than C_max {lp['C_max']}")


# Values that name files: models' weights (but the non-file sources), OpenCLIP configs, dataset roots, references.
_NOT_FILES = ("hub", "none")
_NOT_FILE_PREFIXES = ("packaged:", "hub:")


def _file_values(cfg: dict):
    """(dotted key, value) of every params value that is a file or folder path."""
    for name, ds in cfg["datasets"].items():
        if "root" in ds:
            yield f"datasets.{name}.root", ds["root"]
    for name, m in cfg["models"].items():
        weights = m["weights"]
        if weights not in _NOT_FILES and not weights.startswith(_NOT_FILE_PREFIXES):
            yield f"models.{name}.weights", weights
        if "config" in m:
            yield f"models.{name}.config", m["config"]
    for i, path in enumerate((cfg.get("report") or {}).get("reference") or []):
        yield f"report.reference[{i}]", path


def _check_paths(cfg: dict, source: str) -> None:
    """Paths are used as written: no shell expands ``~`` or ``$VAR`` (``~/x`` would create a folder named ``~``)."""
    for key, path in _file_values(cfg):
        if path.startswith("~"):
            raise ParamsError(f"{source}: {key}: {path!r} starts with ~, which nothing expands (a folder named ~ "
                              "would appear); write the full path")
        if "$" in path:
            raise ParamsError(f"{source}: {key}: {path!r} holds a variable ($...), which nothing expands; write the "
                              "path itself")
        if "\0" in path:
            raise ParamsError(f"{source}: {key}: the path holds a NUL character")
        long = next((part for part in path.split("/") if len(part.encode()) > 255), None)
        if long is not None:
            raise ParamsError(f"{source}: {key}: {long[:20]!r}... is {len(long.encode())} bytes long; a file name "
                              "has at most 255")


def _check_report(cfg: dict, source: str) -> None:
    report, exp = cfg.get("report") or {}, cfg["experiment"]
    base = report.get("baseline")
    if base is not None and base not in (*exp["methods"], "lp", "zeroshot"):
        raise ParamsError(f"{source}: report.baseline: {base!r} is not in experiment.methods (nor lp or zeroshot)")
    for role, name in (report.get("claims") or {}).items():
        if name not in exp["methods"]:
            raise ParamsError(f"{source}: report.claims.{role}: {name!r} is not in experiment.methods")
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
    recipe = report.get("recipe")
    if recipe is not None:
        if not Path(recipe).is_file():
            raise ParamsError(f"{source}: report.recipe: {recipe} not found")
        try:
            check_card(cfg, recipe)
        except RecipeError as e:
            raise ParamsError(f"{source}: report.recipe: {e}") from None
    alpha = report.get("wise_ft_alpha")
    alphas = (cfg.get("wise_ft") or {}).get("alphas") or []
    if alpha is not None and (cfg.get("wise_ft") or {}).get("methods", True) and alpha not in alphas:
        raise ParamsError(f"{source}: report.wise_ft_alpha: {alpha} is not in wise_ft.alphas {alphas}")
    if (cfg.get("wise_ft") or {}).get("select") == "fixed" and alpha is None:
        from pipeline.reporting.aggregate import WISE_FT_ALPHA

        if WISE_FT_ALPHA not in alphas:
            raise ParamsError(f"{source}: wise_ft.select: fixed reports alpha {WISE_FT_ALPHA} (report.wise_ft_alpha), "
                              f"which is not in wise_ft.alphas {alphas}")


def _check_dataset(name: str, ds: dict, source: str) -> None:
    from pipeline.data.sources import COMMON_KEYS, SOURCES

    allowed = set(SOURCES[ds["source"]].keys) | set(COMMON_KEYS)
    for key in ds:
        if key not in allowed:
            raise ParamsError(f"{source}: datasets.{name}.{key}: not used by source {ds['source']} "
                              f"(its keys: {', '.join(sorted(allowed))})")
    for key in ("crop_scale", "ratio"):
        pair = (ds.get("train_augment") or {}).get(key)
        if pair is not None and pair[0] > pair[1]:
            raise ParamsError(f"{source}: datasets.{name}.train_augment.{key}: {pair} is not (min, max)")
    if ds["source"] == "domainnet" and ds.get("id_domain") in (ds.get("ood_domains") or []):
        raise ParamsError(f"{source}: datasets.{name}.ood_domains: contains the ID domain {ds['id_domain']!r}")


def _check_method(name: str, m: dict, source: str, override: tuple[str, dict] | None = None) -> None:
    """One method's keys and grid; ``override`` = (dataset, its ``datasets.<d>.methods.<name>``) checks the
    method as it applies on that dataset (``m`` is then the merged config), naming where each key is set."""
    def at(key: str) -> str:
        if override is not None and key in override[1]:
            return f"datasets.{override[0]}.methods.{name}.{key}"
        return f"methods.{name}.{key}"

    grid = m.get("grid") or {}
    where = at("grid")
    if POINTS in grid and len(grid) > 1:
        other = sorted(k for k in grid if k != POINTS)
        raise ParamsError(f"{source}: {where}.{other[0]}: a grid of named points is the whole grid; set "
                          f"{other[0]} in each point (or at the method level)")
    swept = swept_keys(m)
    # A key only some optimizers read is a mistake under another one, not a no-op.
    for key in dict.fromkeys([*m, *swept]):
        readers = [c.name for c in owners(key)]
        if optimizer_only(key) and m["optimizer"] not in readers:
            place = at(key) if key in m else f"{where}.{_swept_at(grid, key)}"
            raise ParamsError(f"{source}: {place}: not used by optimizer {m['optimizer']} "
                              f"(only by {', '.join(readers)})")
    for key in swept:
        if key in m:
            raise ParamsError(f"{source}: {at(key)}: also swept in {where}.{_swept_at(grid, key)}; keep one")
    labels = list(grid[POINTS]) if POINTS in grid else [None] * len(grid_points(m))
    for label, point in zip(labels, grid_points(m)):
        rates = [k for k in ("lr", "effective_lr") if k in m or k in point]
        if len(rates) != 1:
            problem = "set lr or effective_lr" if not rates else "set lr or effective_lr, not both"
            place = f"{where}.{POINTS}.{label}" if label is not None else (
                f"datasets.{override[0]}.methods.{name}" if override is not None else f"methods.{name}")
            raise ParamsError(f"{source}: {place}: {problem}")


def _swept_at(grid: dict, key: str) -> str:
    """Where a grid sets ``key``: ``lr`` or ``points.<first point that sets it>.lr``."""
    if POINTS not in grid:
        return key
    return f"{POINTS}.{next(hp for hp, p in grid[POINTS].items() if key in (p or {}))}.{key}"


def _check_overrides(cfg: dict, source: str) -> None:
    """``datasets.<d>.methods.<m>``: a defined method, and the method as it applies there is valid."""
    for dataset, ds in cfg["datasets"].items():
        for method, override in (ds.get("methods") or {}).items():
            if method not in cfg["methods"]:
                raise ParamsError(f"{source}: datasets.{dataset}.methods.{method}: no such method "
                                  f"(defined under methods: {', '.join(sorted(cfg['methods']))})")
            _check_method(method, method_config(cfg, method, dataset), source, (dataset, override))


def _check_limits(cfg: dict, name: str, source: str) -> None:
    """``methods.<m>.models`` / ``.datasets`` name defined entries, and a method of the experiment keeps a run."""
    m, exp = cfg["methods"][name], cfg["experiment"]
    for key in ("models", "datasets"):
        for i, item in enumerate(m.get(key) or []):
            if item not in cfg[key]:
                raise ParamsError(f"{source}: methods.{name}.{key}[{i}]: unknown {key[:-1]} {item!r} "
                                  f"(defined under {key}: {', '.join(sorted(cfg[key]))})")
    if name not in exp["methods"] or ("models" not in m and "datasets" not in m):
        return
    if not any(runs_on(cfg, name, d, model) for d in exp["datasets"] for model in exp["models"]
               if model in (cfg["datasets"][d].get("models") or exp["models"])):
        limits = " and ".join(f"{k} {m[k]}" for k in ("models", "datasets") if k in m)
        raise ParamsError(f"{source}: methods.{name}: limited to {limits}, it has no run in this experiment "
                          "(none of them in experiment.models / experiment.datasets, or no such pair); "
                          "widen the limit or remove it from experiment.methods")


def setting_key(cfg: dict, dataset: str, method: str, key: str) -> str:
    """The dotted key a run's setting comes from: the most specific level that sets it."""
    levels = [f"datasets.{dataset}.methods.{method}.grid.{key}", f"datasets.{dataset}.methods.{method}.{key}",
              f"methods.{method}.grid.{key}", f"methods.{method}.{key}", f"datasets.{dataset}.finetune.{key}",
              f"finetune.{key}"]
    for level in levels:
        try:
            lookup(cfg, level)
            return level
        except (KeyError, TypeError):
            continue
    return f"finetune.{key} (default)"


def _check_batches(cfg: dict, dataset: str, method: str, s: dict, source: str) -> None:
    """The global batch must split evenly over the GPUs and then over the micro-batches; warm-up must end
    (``s``: the run's resolved settings at one grid point)."""
    if s["warmup_epochs"] >= s["epochs"]:
        raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'warmup_epochs')}: {s['warmup_epochs']} "
                          f"is not shorter than training ({s['epochs']} epochs; method {method}, dataset "
                          f"{dataset}): the learning rate would never leave the warm-up")
    if s["batch_size"] % (s["gpus"] * s["accumulate"]):
        raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'batch_size')}: {s['batch_size']} does "
                          f"not split into gpus x accumulate = {s['gpus']} x {s['accumulate']} equal "
                          f"micro-batches (method {method}, dataset {dataset})")


def _check_protocol(cfg: dict, dataset: str, method: str, s: dict, source: str) -> None:
    """Schedules and mixing: what each needs of the other settings."""
    if s["schedule"] == "cosine_per_epoch" and (s["warmup_epochs"] > 0 or (s["warmup_steps"] or 0) > 0):
        key = "warmup_steps" if s["warmup_steps"] else "warmup_epochs"
        raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, key)}: schedule cosine_per_epoch "
                          f"(transfer_learning's) has no warmup; set it to 0 (method {method}, dataset {dataset})")
    mixing = s["mixup_alpha"] > 0 or s["cutmix_alpha"] > 0
    if mixing and (s["batch_size"] // (s["gpus"] * s["accumulate"])) % 2:
        raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'batch_size')}: mixup/CutMix pairs "
                          f"images, but {s['batch_size']} / (gpus x accumulate) is odd (method {method}, dataset "
                          f"{dataset})")


def _check_schedule(cfg: dict, dataset: str, method: str, s: dict, source: str) -> None:
    """Milestones belong to the step schedule, and must be increasing epochs inside training."""
    ms = list(s["milestones"])
    if not ms:
        return
    key = setting_key(cfg, dataset, method, "milestones")
    if s["schedule"] != "multistep":
        raise ParamsError(f"{source}: {key}: only schedule multistep reads milestones (this run's schedule: "
                          f"{s['schedule']}; method {method}, dataset {dataset})")
    if ms != sorted(ms) or ms[-1] >= s["epochs"]:
        raise ParamsError(f"{source}: {key}: {ms} must be increasing epochs before the last of {s['epochs']} "
                          f"(method {method}, dataset {dataset})")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root or pass --params)")
    try:
        cfg = read_yaml_file(path)
    except YAMLShapeError as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ParamsError(f"{path}:{where} not valid YAML: {problem}") from None
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
