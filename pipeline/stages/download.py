"""Stage ``download``: put one dataset's files in place under its root, or check that they are.

Inputs: none (the network, or data placed by hand). For each manifest part the dataset's source
needs (:func:`~pipeline.download.datasets.parts_for`), :func:`~pipeline.download.datasets.ensure_dataset`
finds it in place without any network connection (its completion marker, or the layout the source
reads), or fetches, verifies and unpacks it; ``download: false`` and licensed data (ImageNet,
hence BREEDS) are only checked, and a missing part stops with one line saying what to place where.
Output: ``data/download/{dataset}.json``, each part and the paths it occupies under the root. It
depends only on the params and on what is on disk, never on whether this run downloaded anything,
so a re-run writes the same bytes and DVC re-runs nothing downstream; ``prepare_data`` takes it as
an input, so it always runs after this stage.
Params: ``datasets.{dataset}.{source,root,download}`` and the keys that choose the parts
(``ood``, ``id_domain``, ``ood_domains``).
A Snakemake local rule (``Stage.local``): on a cluster it runs on the submitting host.
Errors: :class:`~pipeline.download.errors.DownloadError`, one line (the CLI prints it).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.download.datasets import ensure_dataset, parts_for, placed_paths
from pipeline.download.manifest import Manifest, active_manifest
from pipeline.io import write_json
from pipeline.stages.job import parse_job

log = logging.getLogger(__name__)


def download_status(name: str, entry: Mapping, manifest: Manifest) -> dict:
    """What the status file records: the dataset's root and, per part, its title and paths under the root."""
    root = str(entry.get("root", DEFAULT_ROOT))
    parts = {}
    for part_name in parts_for(str(entry["source"]), entry):
        part = manifest.part(part_name)
        parts[part_name] = {"title": part.title, "paths": placed_paths(part, Path(root))}
    return {"dataset": name, "source": str(entry["source"]), "root": root, "parts": parts}


def main(argv: list[str] | None = None) -> int:
    job = parse_job("download", argv)
    name = job.wildcards["dataset"]
    entry = job.params["datasets"][name]
    manifest = active_manifest()
    found = ensure_dataset(name, entry, manifest=manifest, log=log)
    write_json(job.outputs["status"], download_status(name, entry, manifest))
    log.info("%s: %s", name, ", ".join(f"{part} {how}" for part, how in found.items()))
    return 0
