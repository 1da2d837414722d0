"""On-disk format of a prepared dataset: per-split uint8 image shards + one metadata table.

Layout of ``data/prepared/{dataset}/``::

    info.json        class names, image size, which splits are ID / OOD
    metadata.csv     one row per image: split, index (row in the split's shard),
                     label, domain, group, source
    {split}.npy      uint8 array [N, H, W, 3], memory-mapped when read
    files/           small files a dataset's official evaluation reads (e.g. WILDS metadata)

``info.json`` may map split aliases (``"aliases": {"ood_test": "id_test"}``): a
split scored twice under two names but stored once. Every real dataset (WILDS,
DomainNet, ...) is decoded once into this format, so training and evaluation
never touch JPEG/PNG decoding.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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
    """Write in-memory splits ``{name: (uint8 [N,H,W,3], metadata)}`` atomically."""
    for name, (images, meta) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"split {name!r}: expected uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        if len(images) != len(meta):
            raise ValueError(f"split {name!r}: {len(images)} images but {len(meta)} metadata rows")
    shape = next(iter(splits.values()))[0].shape[1:3] if splits else (0, 0)

    def fill(name: str, out: np.ndarray) -> None:
        out[...] = splits[name][0]

    write_streaming(out_dir, {n: m for n, (_, m) in splits.items()}, fill, tuple(shape), info)


def write_streaming(out_dir: str | Path, metas: dict[str, pd.DataFrame], fill: Callable[[str, np.ndarray], None],
                    shape: tuple[int, int], info: dict, files: dict[str, Path] | None = None) -> None:
    """Write every split by letting ``fill(name, memmap)`` decode into its shard; atomic as a whole.

    The shards are written in place as memory-mapped ``.npy`` files, so a split larger
    than RAM (ImageNet) streams through. The directory appears complete or not at all.
    """
    with atomic_path(out_dir, is_dir=True) as tmp:
        frames = []
        for name, meta in metas.items():
            out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(meta), *shape, 3))
            fill(name, out)
            out.flush()
            del out
            meta = meta.assign(split=name, index=np.arange(len(meta)))
            frames.append(meta[METADATA_COLUMNS + [c for c in meta.columns if c not in METADATA_COLUMNS]])
        pd.concat(frames, ignore_index=True).to_csv(tmp / "metadata.csv", index=False)
        for rel, src in (files or {}).items():
            dst = tmp / "files" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        info = {**info, "splits": {n: int(len(m)) for n, m in metas.items()}}
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
        # Names stay strings: a domain or group called "0" must not become a number.
        self.metadata = pd.read_csv(self.root / "metadata.csv", dtype={"domain": str, "group": str, "source": str},
                                    keep_default_na=False)

    @property
    def num_classes(self) -> int:
        return len(self.info["classes"])

    @property
    def split_names(self) -> list[str]:
        """Every split name, aliases included (after the split they alias)."""
        names = list(self.info["splits"])
        return names + [a for a in self.aliases if a not in names]

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self.info.get("aliases") or {})

    def physical(self, name: str) -> str:
        """The stored split behind ``name`` (itself unless ``name`` is an alias)."""
        return self.aliases.get(name, name)

    def split(self, name: str) -> SplitData:
        if name not in self.split_names:
            raise KeyError(f"split {name!r} not in {self.root} (has {self.split_names})")
        stored = self.physical(name)
        images = np.load(self.root / f"{stored}.npy", mmap_mode="r")
        meta = self.metadata[self.metadata["split"] == stored].sort_values("index").reset_index(drop=True)
        return SplitData(images, meta)
