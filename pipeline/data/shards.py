"""On-disk format of a prepared dataset: per-split uint8 image shards + one metadata table.

Layout of ``data/prepared/{dataset}/``::

    info.json        class names, image size, which splits are ID / OOD
    metadata.csv     one row per image: split, index (row in the split's shard),
                     label, domain, group, source
    {split}.npy      uint8 array [N, H, W, 3], memory-mapped when read

Every real dataset (WILDS, DomainNet, ...) is decoded once into this format, so
training and evaluation never touch JPEG/PNG decoding.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import atomic_path

METADATA_COLUMNS = ["split", "index", "label", "domain", "group", "source"]


@dataclass(frozen=True)
class SplitData:
    """Images (uint8 NHWC, possibly memory-mapped) and their metadata rows."""

    images: np.ndarray
    metadata: pd.DataFrame

    @property
    def labels(self) -> np.ndarray:
        return self.metadata["label"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.metadata)


def write_prepared(out_dir: str | Path, splits: dict[str, tuple[np.ndarray, pd.DataFrame]], info: dict) -> None:
    """Write all splits atomically: the directory appears complete or not at all."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        frames = []
        for name, (images, meta) in splits.items():
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"split {name!r}: expected uint8 [N,H,W,3], got {images.dtype} {images.shape}")
            if len(images) != len(meta):
                raise ValueError(f"split {name!r}: {len(images)} images but {len(meta)} metadata rows")
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(images))
            meta = meta.assign(split=name, index=np.arange(len(meta)))
            frames.append(meta[METADATA_COLUMNS])
        pd.concat(frames, ignore_index=True).to_csv(tmp / "metadata.csv", index=False)
        info = {**info, "splits": {n: int(len(m)) for n, (_, m) in splits.items()}}
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")  # split order matters


class PreparedDataset:
    """Read access to a prepared dataset directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(
                f"prepared dataset not found: {info_path} is missing. "
                f"Expected {self.root}/{{info.json, metadata.csv, <split>.npy}}, written by the prepare_data stage.")
        self.info = json.loads(info_path.read_text())
        self.metadata = pd.read_csv(self.root / "metadata.csv")

    @property
    def num_classes(self) -> int:
        return len(self.info["classes"])

    @property
    def split_names(self) -> list[str]:
        return list(self.info["splits"])

    def split(self, name: str) -> SplitData:
        if name not in self.info["splits"]:
            raise KeyError(f"split {name!r} not in {self.root} (has {self.split_names})")
        images = np.load(self.root / f"{name}.npy", mmap_mode="r")
        meta = self.metadata[self.metadata["split"] == name].sort_values("index").reset_index(drop=True)
        return SplitData(images, meta)
