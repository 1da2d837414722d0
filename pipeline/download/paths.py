"""Where fetched files land locally, for the code that reads them without needing the downloader.

A stage's re-runs follow the source files it imports (:func:`pipeline.stages.source_files`), so
the ``backbone`` stage imports this module rather than :mod:`.hub`: editing the download code
does not re-run every backbone. Nothing but the standard library is imported here.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_HUB_DIR = Path("data/hub")


def hub_checkpoint_path(timm_name: str, out_dir: str | Path = DEFAULT_HUB_DIR) -> Path:
    """``data/hub/<timm_name>.safetensors``: the ``weights: hub`` checkpoint ``python -m pipeline fetch`` writes."""
    return Path(out_dir) / f"{timm_name}.safetensors"


def openclip_checkpoint_path(arch: str, tag: str, out_dir: str | Path = DEFAULT_HUB_DIR) -> Path:
    """``data/hub/open_clip/<arch>/<tag>.safetensors``: an OpenCLIP ``hub:<tag>`` checkpoint ``fetch`` writes."""
    return Path(out_dir) / "open_clip" / arch / f"{tag}.safetensors"
