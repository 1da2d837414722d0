"""Stage ``prepare_data``: decode a dataset once into uint8 shards + metadata.

Inputs: the dataset under ``datasets.{dataset}.root`` (default ``data/raw``; layouts
in each source module and the README), put there by the ``download`` stage (whose
status file ``data/download/{dataset}.json`` is an input, so this runs after it) or by
hand; for ``digits``, data shipped by PyPI packages. Preparation never downloads.
Output: ``data/prepared/{dataset}/`` in the format of :mod:`pipeline.data.shards`:
images center-cropped and resized to ``image_size`` (default 224), the metadata
table, and any small files the dataset's official evaluation needs.
Params: ``datasets.{dataset}`` (every key but ``train_augment``, ``finetune`` and ``download``).
Errors: missing or incomplete data names the path, the expected layout and where
the data comes from; an undecodable image names its file. Nothing is written then.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from pipeline.data.shards import write_prepared, write_streaming
from pipeline.data.sources import DEFAULT_IMAGE_SIZE, SOURCES
from pipeline.job import parse_job

log = logging.getLogger(__name__)

DIGITS_DEFAULTS = {"image_size": 64, "train_per_class": 100, "val_per_class": 50, "test_per_class": 50,
                   "ood_per_class": 50, "seed": 0, "classes": 10}


def image_size(ds_cfg: Mapping) -> int:
    """The side of the square images a dataset entry prepares."""
    if ds_cfg["source"] == "digits":
        return int({**DIGITS_DEFAULTS, **(ds_cfg.get("build") or {})}["image_size"])
    return int(ds_cfg.get("image_size", DEFAULT_IMAGE_SIZE))


def known_train_size(ds_cfg: Mapping) -> int | None:
    """The training split's size where the entry alone says it (the digits task), else None."""
    if ds_cfg["source"] == "digits":
        build = {**DIGITS_DEFAULTS, **(ds_cfg.get("build") or {})}
        return int(build["classes"]) * int(build["train_per_class"])
    return None


def prepare(name: str, ds_cfg: Mapping, out_dir: str, config_hash: str = "") -> dict[str, int]:
    """Build dataset ``name`` into ``out_dir``; returns the image count per split."""
    source = ds_cfg["source"]
    # Imported by name, so that each dataset's job depends on its own source's code only.
    module = importlib.import_module(SOURCES[source].module)
    if source == "digits":
        splits, info = module.build_digits_task(**{**DIGITS_DEFAULTS, **ds_cfg.get("build", {})})
        write_prepared(out_dir, splits, {**info, "config_hash": config_hash})
        return {k: len(v[1]) for k, v in splits.items()}

    from pipeline.data.decode import manifest_filler

    manifest = module.manifest(name, ds_cfg)
    size = image_size(ds_cfg)
    records = manifest.records
    metas = {s: records[records["split"] == s].drop(columns="split").reset_index(drop=True)
             for s in manifest.split_names()}
    info = {"name": name, "source": source, "classes": list(manifest.classes), "image_size": size,
            "train_split": "train", "val_split": "id_val", "aliases": dict(manifest.aliases),
            **manifest.info, "config_hash": config_hash}
    write_streaming(out_dir, metas, manifest_filler(manifest, size), (size, size), info, manifest.files)
    return {s: len(m) for s, m in metas.items()}


def main(argv: list[str] | None = None) -> int:
    job = parse_job("prepare_data", argv)
    name = job.wildcards["dataset"]
    counts = prepare(name, job.params["datasets"][name], job.outputs["data"], job.config_hash)
    log.info("wrote %s: %s", job.outputs["data"], counts)
    return 0
