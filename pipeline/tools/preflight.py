"""Checks that need the model libraries, run once before any job: ``python -m pipeline validate --deep``.

The schema and the cross-key checks (:mod:`pipeline.config`) run whenever params.yaml is read,
including every Snakefile parse, so they import no torch. These need torch and timm (a few
seconds), so they run once per workflow: in the Snakefile's ``onstart`` (before the first job,
not on dry runs) and in DVC's ``check_params`` stage (upstream of every stage). Each failure is
one line naming the key:

* every model's ``timm_name`` is a timm model, or its ``open_clip`` name an OpenCLIP one (close
  names suggested), with a known pretrained tag;
* a ``weights`` file exists and is read as the backbone stage will (tensors only, all finite, the
  architecture's keys and shapes: :mod:`pipeline.models.state_files`), packaged weights' package is installed;
* a dataset a zero-shot method runs on has class names and prompt templates;
* every model's input size (its pretrained config's, or ``input_size``) goes through it, and its eval
  transform is one this pipeline runs: a forward pass on the meta device (no memory, no arithmetic),
  so a fixed-size model (a ViT) given another size is caught with the fix to apply;
* a freeze policy (and the embedding lr) matches layer groups of every model's family;
* a ``randaugment`` string parses with timm (and, until the loader applies it, is refused);
* a run's batch size (and ``warmup_steps``) fits its training split, where the split's size is known before any job
  (the digits task, from its build settings; any dataset already prepared). Otherwise the
  fine-tune checks it when it starts, in one line.
"""
from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from pipeline import compat
from pipeline.config import ParamsError
from pipeline.config.load import setting_key
from pipeline.config.settings import grid_points, method_config, resolve_settings, runs_on
from pipeline.data.prepare import known_train_size
from pipeline.models.backbone import PACKAGED_WEIGHTS, model_from_config, model_kwargs
from pipeline.models.heads import HeadFormError
from pipeline.models.layers import FREEZE_ALIASES, layer_groups, resolve_freeze
from pipeline.models.transforms import eval_transform
from pipeline.models.weights import read_weights_file
from pipeline.stages.registry import PREPARED

compat.apply()
import timm  # noqa: E402


def check(cfg: Mapping, source: str = "params.yaml") -> None:
    """Raise :class:`ParamsError` (one line) on the first problem of the experiment's models and runs."""
    exp = cfg["experiment"]
    for name in exp["models"]:
        _check_model_entry(name, cfg["models"][name], source)
    if any(cfg["methods"][m]["init"] == "zeroshot" for m in exp["methods"]):
        from pipeline.data.prompts import NoClassNamesError, check_prompts

        for dataset in exp["datasets"]:
            try:
                check_prompts(dataset, cfg["datasets"][dataset])
            except NoClassNamesError as e:
                raise ParamsError(f"{source}: {e}") from None
    with torch.device("meta"):   # shapes only: no memory, no arithmetic
        models = {name: _meta_model(name, cfg["models"][name], source) for name in exp["models"]}
        for name, model in models.items():
            _check_input_size(model, cfg, name, source)
    for method in exp["methods"]:
        for name, model in models.items():
            if runs_on(cfg, method, model=name):
                _check_freeze(model, cfg, method, name, source)
    for dataset in exp["datasets"]:
        for method, s in _runs(cfg, dataset):
            if s["randaugment"] is not None:
                _check_randaugment(s["randaugment"], setting_key(cfg, dataset, method, "randaugment"), source)
        n = _train_size(cfg, dataset)
        if n is None:
            continue
        for method, s in _runs(cfg, dataset):
            if s["batch_size"] > n:
                raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'batch_size')}: {s['batch_size']} is "
                                  f"larger than the training split of {dataset} ({n} images; method {method})")
            total = s["epochs"] * (n // s["batch_size"])
            if s["warmup_steps"] is not None and s["warmup_steps"] >= total:
                raise ParamsError(f"{source}: {setting_key(cfg, dataset, method, 'warmup_steps')}: "
                                  f"{s['warmup_steps']} is not shorter than training ({total} steps of {dataset}; "
                                  f"method {method})")


def parse_randaugment(config: str) -> dict:
    """``{"num_layers", "magnitude", "ops"}`` of a timm RandAugment config string (``rand-m9-n2-mstd0.5``),
    parsed by timm's own ``rand_augment_transform``; a section timm would skip (no value) is refused."""
    from timm.data.auto_augment import rand_augment_transform

    skipped = [c for c in config.split("-")[1:] if not c.startswith("t") and not re.search(r"\d", c)]
    if skipped:
        raise ValueError(f"section(s) {', '.join(skipped)} carry no value (timm would ignore them)")
    transform = rand_augment_transform(config, {})
    return {"num_layers": transform.num_layers, "magnitude": transform.ops[0].magnitude,
            "ops": [op.name for op in transform.ops]}


def _check_randaugment(config: str, key: str, source: str) -> None:
    try:
        parsed = parse_randaugment(config)
    except Exception as e:   # timm asserts on an unknown section; int()/float() raise on a bad value
        raise ParamsError(f"{source}: {key}: {config!r} is not a timm RandAugment string "
                          f"({type(e).__name__}: {e or 'bad format'})") from None
    raise ParamsError(f"{source}: {key}: {config!r} parses ({parsed['num_layers']} ops per image, magnitude "
                      f"{parsed['magnitude']}) but RandAugment is not applied yet (per-image PIL transforms come "
                      "with the loader rework); remove it for now")


def _check_model_entry(name: str, entry: Mapping, source: str) -> None:
    key = f"models.{name}"
    if "open_clip" in entry:
        from pipeline.models.openclip import OpenCLIPConfigError, check_entry

        try:
            check_entry(name, entry)
        except OpenCLIPConfigError as e:
            raise ParamsError(f"{source}: {e}") from None
        _check_weights_file(name, entry, source)
        return
    arch = entry["timm_name"]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch.split(".")[0], timm.list_models(), n=3)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ParamsError(f"{source}: {key}.timm_name: unknown timm model {arch!r}{hint}")
    weights = entry["weights"]
    if weights.startswith("packaged:"):
        packaged = weights.split(":", 1)[1]
        if packaged not in PACKAGED_WEIGHTS:
            raise ParamsError(f"{source}: {key}.weights: unknown packaged weights {packaged!r} "
                              f"(known: {', '.join(sorted(PACKAGED_WEIGHTS))})")
    elif weights == "hub":
        if "." in arch and arch not in timm.list_pretrained():
            raise ParamsError(f"{source}: {key}.weights: timm has no pretrained weights {arch!r}")
    elif weights != "none" and not Path(weights).is_file():
        raise ParamsError(f"{source}: {key}.weights: file not found: {weights} (place the checkpoint there; the "
                          f"entry's comment in the config says where it comes from)")
    elif weights != "none":
        _check_weights_file(name, entry, source)


def _check_weights_file(name: str, entry: Mapping, source: str) -> None:
    """A checkpoint file read as the backbone stage will: readable, finite, of the model's keys and shapes."""
    from pipeline.models.state_files import CheckpointError

    try:
        if "open_clip" in entry:
            from pipeline.models.openclip import check_weights_file

            check_weights_file(entry, name)
        else:
            read_weights_file(entry["timm_name"], entry["weights"], model_kwargs(entry), entry.get("weights_prefix"))
    except CheckpointError as e:
        key = f"models.{name}.weights: "
        raise ParamsError(f"{source}: {'' if str(e).startswith(key) else key}{e}") from None


def _meta_model(name: str, entry: Mapping, source: str) -> torch.nn.Module:
    try:
        return model_from_config(entry, 10, None)
    except HeadFormError as e:
        key = "model_kwargs" if str(e).startswith("model_kwargs") else "head"
        raise ParamsError(f"{source}: models.{name}.{key}: {e}") from None
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise ParamsError(f"{source}: models.{name}.model_kwargs: {_arch(entry)} rejects them: "
                          f"{str(e).splitlines()[0]}") from None


def _arch(entry: Mapping) -> str:
    return entry["timm_name"] if "timm_name" in entry else f"OpenCLIP {entry['open_clip']}"


def _check_input_size(model: torch.nn.Module, cfg: Mapping, name: str, source: str) -> None:
    try:
        size = eval_transform(model).size
    except ValueError as e:
        raise ParamsError(f"{source}: models.{name}: {str(e).replace('<name>', name)}") from None
    try:
        model(torch.empty(2, 3, size, size))
    except (AssertionError, RuntimeError, ValueError) as e:
        key = f"models.{name}.input_size"
        adapt = "" if "open_clip" in cfg["models"][name] else (
            f", or set models.{name}.model_kwargs: {{img_size: {size}}} (position embeddings resampled) or "
            "{dynamic_img_size: true}")
        raise ParamsError(f"{source}: {key}: {size} px inputs do not fit models.{name} "
                          f"({_arch(cfg['models'][name])}: {str(e).splitlines()[0]}); leave input_size to the "
                          f"model's pretrained config{adapt}") from None


def _check_freeze(model: torch.nn.Module, cfg: Mapping, method: str, name: str, source: str) -> None:
    for point in grid_points(cfg["methods"][method]):
        s = resolve_settings(cfg, method, point)
        k = resolve_freeze(s["freeze"])
        needs = max(k, FREEZE_ALIASES["embed"] if float(s["embed_lr_multiplier"]) != 1.0 else 0)
        if not needs:
            continue
        key = f"methods.{method}.{'freeze' if k else 'embed_lr_multiplier'}"
        try:
            groups = layer_groups(model)
        except ValueError as e:
            raise ParamsError(f"{source}: {key}: matches no layers of models.{name}: {e}") from None
        if needs > len(groups) - 1:
            raise ParamsError(f"{source}: {key}: {needs} layer groups asked, but models.{name} "
                              f"({type(model).__name__}) has {len(groups)} and its head stays trainable")


def _train_size(cfg: Mapping, dataset: str) -> int | None:
    info = Path(PREPARED.format(dataset=dataset)) / "info.json"
    if info.is_file():
        splits = json.loads(info.read_text())
        return int(splits["splits"].get(splits.get("train_split", "train"), 0))
    return known_train_size(cfg["datasets"][dataset])


def _runs(cfg: Mapping, dataset: str) -> Iterator[tuple[str, dict]]:
    for method in (m for m in cfg["experiment"]["methods"] if runs_on(cfg, m, dataset)):
        for point in grid_points(method_config(cfg, method, dataset)):
            yield method, resolve_settings(cfg, method, point, dataset)
