"""``python -m pipeline fetch --params FILE [--datasets a,b]``: download everything a config needs, ahead of the DAG.

For each experiment dataset whose source reads files (all but the embedded ``digits``), the same
:func:`~pipeline.download.datasets.ensure_dataset` as the ``download`` stage (in place: no
network; ``download: false`` or licensed: checked only); for each experiment model with
``weights: hub``, timm's checkpoint into ``data/hub/<timm_name>.safetensors``
(:func:`~pipeline.download.hub.fetch_hub_checkpoint`), and for each OpenCLIP model with
``weights: hub:<tag>``, the tag's checkpoint into ``data/hub/open_clip/<arch>/<tag>.safetensors``
(:func:`~pipeline.download.hub.fetch_openclip_checkpoint`); the ``backbone`` stage then reads
them offline. On a cluster: run this on a login node with network, then the DAG on offline compute
nodes, where every download job finds its data in place.

Every item is tried, then each failure is one line (``error: ...``; several end with a summary
line) and the command exits with the first failure's exit code
(:class:`~pipeline.download.errors.DownloadError`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import ParamsError, load_params
from pipeline.data.sources import SOURCES
from pipeline.download.errors import DownloadError
from pipeline.io import setup_logging
from pipeline.stages.registry import similarity_sources

log = logging.getLogger(__name__)


def _datasets(cfg: dict, only: str, params: str) -> list[str]:
    known = [*cfg["experiment"]["datasets"], *similarity_sources(cfg)]   # the download stage's datasets
    names = [d for d in only.split(",") if d] or known
    for d in names:
        if d not in known:
            raise ParamsError(f"--datasets: {d!r} is not in experiment.datasets of {params} (nor the similarity "
                              "source)")
    # digits is built from files PyPI packages ship: nothing to fetch
    return [d for d in names if SOURCES[cfg["datasets"][d]["source"]].reads_files]


def _hub_models(cfg: dict) -> list[str]:
    """Experiment models with hub weights: timm's ``hub``, or an OpenCLIP entry's ``hub:<tag>``."""
    return [m for m in cfg["experiment"]["models"]
            if cfg["models"][m].get("weights") == "hub" or _openclip_tag(cfg["models"][m])]


def _openclip_tag(entry: dict) -> str | None:
    weights = str(entry.get("weights", ""))
    return weights[len("hub:"):] if "open_clip" in entry and weights.startswith("hub:") else None


def fetch(cfg: dict, datasets: list[str], models: list[str]) -> list[DownloadError]:
    """Put each dataset and hub checkpoint in place; returns the failures."""
    from pipeline.download.datasets import ensure_dataset
    from pipeline.download.hub import fetch_hub_checkpoint, fetch_openclip_checkpoint

    failed: list[DownloadError] = []
    for name in datasets:
        try:
            found = ensure_dataset(name, cfg["datasets"][name], log=log)
            print(f"{name}: in place ({', '.join(f'{part}: {how}' for part, how in found.items())})")
        except DownloadError as e:
            failed.append(e)
    for model in models:
        try:
            entry = cfg["models"][model]
            tag = _openclip_tag(entry)
            path = fetch_openclip_checkpoint(entry["open_clip"], tag, log=log) if tag else \
                fetch_hub_checkpoint(entry["timm_name"], log=log)
            print(f"{model}: checkpoint in place at {path}")
        except DownloadError as e:
            failed.append(e)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline fetch",
                                description="Download every dataset and weights: hub checkpoint a config needs, "
                                            "ahead of the DAG (on a machine with network).")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--datasets", default="",
                   help="comma-separated experiment datasets (default: all; hub checkpoints are always fetched)")
    args = p.parse_args(argv)
    # huggingface_hub reads this once, at import (nothing before this line imports it): fetching is
    # this command's purpose, even where HF_HUB_OFFLINE=1 is exported for the pipeline's stages.
    os.environ["HF_HUB_OFFLINE"] = "0"
    setup_logging()
    cfg = load_params(args.params)
    datasets, models = _datasets(cfg, args.datasets, args.params), _hub_models(cfg)
    if not datasets and not models:
        print(f"{args.params}: nothing to fetch (no dataset reads files, no model has weights: hub)")
    failed = fetch(cfg, datasets, models)
    if len(failed) == 1:
        raise failed[0]   # the CLI prints its one line
    if failed:
        for e in failed:
            print(f"error: {e}", file=sys.stderr)
        summary = DownloadError(f"{len(failed)} of {len(datasets) + len(models)} downloads failed (the lines above)")
        summary.exit_code = failed[0].exit_code
        raise summary
    return 0
