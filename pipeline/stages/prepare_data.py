"""Stage ``prepare_data``: decode a dataset once into image shards + their index + metadata.

Inputs: the dataset under ``datasets.{dataset}.root`` (default ``data/raw``; layouts
in each source module and the README), put there by the ``download`` stage (whose
status file ``data/download/{dataset}.json`` is an input, so this runs after it) or by
hand; for ``digits``, data shipped by PyPI packages. Preparation never downloads.
Output: ``data/prepared/{dataset}/`` in the format of :mod:`pipeline.data.shards`:
every image once, aspect ratio kept, its shorter side at most ``storage_size`` (default 256),
as JPEG (``jpeg_quality``, default 90) or raw (``encoding``); the index of records with every
file's size and SHA-256; the metadata table; any small files the dataset's official evaluation
needs. The same inputs give the same bytes.
Params: ``datasets.{dataset}`` (every key but ``train_augment``, ``finetune`` and ``download``).
Errors: missing or incomplete data names the path, the expected layout and where
the data comes from; an undecodable image names its file. Nothing is written then.
"""
from __future__ import annotations

import logging

from pipeline.data.prepare import prepare
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    job = parse_job("prepare_data", argv)
    name = job.wildcards["dataset"]
    counts = prepare(name, job.params["datasets"][name], job.outputs["data"], job.config_hash)
    log.info("wrote %s: %s", job.outputs["data"], counts)
    return 0
