"""Decoding a dataset once into image shards + metadata (the ``prepare_data`` stage's library).

Reads the dataset under its ``root`` through its source module (:mod:`pipeline.data.sources`), or, for
``digits``, builds it from data PyPI packages ship; preparation never downloads. Writes the format of
:mod:`pipeline.data.shards`: every image once, aspect ratio kept, its shorter side at most
``storage_size``, stored as ``encoding`` says (JPEG at ``jpeg_quality``, or raw pixels); the metadata
table; any small files the dataset's official evaluation needs; and the index with every file's size and
checksum. Missing or incomplete data names the path, the expected layout and where the data comes from;
an undecodable image names its file. Nothing is written then.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from pipeline.data.images import Storage
from pipeline.data.shards import write_prepared, write_streaming
from pipeline.data.sources import SOURCES, dataset_settings

log = logging.getLogger(__name__)


def storage(ds_cfg: Mapping) -> Storage:
    """How a dataset entry stores its images (its source's defaults filled in)."""
    s = dataset_settings(ds_cfg)
    return Storage(int(s["storage_size"]), str(s["encoding"]), int(s["jpeg_quality"]))


def known_train_size(ds_cfg: Mapping) -> int | None:
    """The training split's size where the entry alone says it (the digits task, from its build), else None."""
    build = dataset_settings(ds_cfg).get("build")
    return int(build["classes"]) * int(build["train_per_class"]) if build else None


def prepare(name: str, ds_cfg: Mapping, out_dir: str, config_hash: str = "") -> dict[str, int]:
    """Build dataset ``name`` into ``out_dir``; returns the image count per split."""
    source = ds_cfg["source"]
    # Imported by name, so that each dataset's job depends on its own source's code only.
    module = importlib.import_module(SOURCES[source].module)
    how = storage(ds_cfg)
    if source == "digits":
        # Built at the storage size itself (its digits are upsampled 28 px MNIST): square, never resized again.
        splits, info = module.build_digits_task(how.size, **dataset_settings(ds_cfg)["build"])
        write_prepared(out_dir, splits, {**info, "config_hash": config_hash}, how)
        return {k: len(v[1]) for k, v in splits.items()}

    from pipeline.data.decode import manifest_filler

    manifest = module.manifest(name, ds_cfg)
    records = manifest.records
    metas = {s: records[records["split"] == s].drop(columns="split").reset_index(drop=True)
             for s in manifest.split_names()}
    info = {"name": name, "source": source, "classes": list(manifest.classes),
            "train_split": "train", "val_split": "id_val", "aliases": dict(manifest.aliases),
            **manifest.info, "config_hash": config_hash}
    write_streaming(out_dir, metas, manifest_filler(manifest, how), info, how, manifest.files)
    return {s: len(m) for s, m in metas.items()}
