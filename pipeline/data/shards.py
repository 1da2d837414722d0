"""On-disk format of a prepared dataset: per-split ragged image shards, their index, one metadata table.

Layout of ``data/prepared/{dataset}/`` (format 2)::

    info.json          the dataset's index: class names, which splits are ID / OOD, how images are
                       stored (``storage``: shorter side, encoding, JPEG quality), the image count of
                       every split, and the size and SHA-256 of every file below (``records``); its
                       own ``checksum`` covers all of that
    metadata.csv       one row per image: split, index (row in the split's shard), label, domain,
                       group, source
    {split}.images     the split's records back to back (JPEG bytes or raw uint8 pixels), memory-mapped
    {split}.index.npy  int64 [N, 4]: offset, length, height, width of each record
    files/             small files a dataset's official evaluation reads (e.g. WILDS metadata)

Images keep their aspect ratio, the shorter side at ``storage_size`` (or smaller if the original is):
the same prepared data serves every model, whose own crops and resizes run on the device
(:mod:`pipeline.data.augment`). ``info.json`` may map split aliases (``"aliases": {"ood_test":
"id_test"}``): a split scored twice under two names but stored once.

Integrity (:mod:`pipeline.data.integrity`): opening a dataset checks, cheaply, the format version,
``info.json``'s checksum, every file's size, the split lists of ``info.json``, the shards and
``metadata.csv``, the class count against the labels, and each split's index against its shard;
``python -m pipeline verify-data`` (or ``PIPELINE_VERIFY_DATA=1``) also checks every SHA-256. Any
mismatch is a :class:`~pipeline.data.errors.PreparedDataError`: one line naming the file and what to do.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import integrity
from pipeline.data.images import Storage, decode, encode
from pipeline.data.integrity import images_file, index_file
from pipeline.io import atomic_path

METADATA_COLUMNS = ["split", "index", "label", "domain", "group", "source"]
FORMAT = integrity.FORMAT
INDEX_COLUMNS = ("offset", "length", "height", "width")


class ImageStore:
    """One split's images: records in a (memory-mapped) uint8 buffer, their index and encoding."""

    def __init__(self, data: np.ndarray, index: np.ndarray, encoding: str):
        self.data, self.index, self.encoding = data, index, encoding

    @classmethod
    def from_array(cls, images: np.ndarray | Sequence[np.ndarray]) -> ImageStore:
        """Raw records of uint8 ``[N, H, W, 3]`` images (no copy when contiguous) or a list of ``[h, w, 3]``."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.dtype != np.uint8 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 [N,H,W,3] images, got {images.dtype} {images.shape}")
            n, h, w, _ = images.shape
            index = np.zeros((n, 4), np.int64)
            index[:, 0], index[:, 1], index[:, 2], index[:, 3] = np.arange(n) * h * w * 3, h * w * 3, h, w
            return cls(np.ascontiguousarray(images).reshape(-1), index, "raw")
        arrays = [np.ascontiguousarray(np.asarray(a, dtype=np.uint8)) for a in images]
        lengths = np.array([a.size for a in arrays], np.int64)
        index = np.stack([np.cumsum(lengths) - lengths, lengths, [a.shape[0] for a in arrays],
                          [a.shape[1] for a in arrays]], axis=1).astype(np.int64).reshape(-1, 4)
        data = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.empty(0, np.uint8)
        return cls(data, index, "raw")

    def __len__(self) -> int:
        return len(self.index)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """int64 [N, 2]: (height, width) of every image as stored (read once, writable: torch may share it)."""
        return np.array(self.index[:, 2:4], dtype=np.int64)

    def record(self, i: int) -> np.ndarray:
        offset, length = int(self.index[i, 0]), int(self.index[i, 1])
        return self.data[offset:offset + length]

    def decode(self, i: int, decoder: str = "pil") -> np.ndarray:
        """uint8 [h, w, 3] of image ``i``."""
        h, w = int(self.index[i, 2]), int(self.index[i, 3])
        return decode(self.record(i), h, w, self.encoding, decoder)

    def stack(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3] of images that share one size (all, or ``rows``): small splits and tests."""
        rows = range(len(self)) if rows is None else rows
        images = [self.decode(int(i)) for i in rows]
        if len({a.shape for a in images}) > 1:
            raise ValueError(f"images of several sizes cannot be stacked: {sorted({a.shape for a in images})[:3]}")
        return np.stack(images) if images else np.empty((0, 0, 0, 3), np.uint8)


@dataclass(frozen=True)
class SplitData:
    """Images (an :class:`ImageStore`; uint8 ``[N, H, W, 3]`` pixels are wrapped in one) and their metadata rows."""

    images: ImageStore
    metadata: pd.DataFrame

    def __post_init__(self) -> None:
        if not isinstance(self.images, ImageStore):
            object.__setattr__(self, "images", ImageStore.from_array(self.images))

    @property
    def labels(self) -> np.ndarray:
        return self.metadata["label"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.metadata)


class SplitWriter:
    """Appends one split's records, in row order, to its shard; the index is written on :meth:`close`."""

    def __init__(self, directory: Path, split: str, count: int):
        self.directory, self.split = directory, split
        self.file = open(directory / images_file(split), "wb")  # noqa: SIM115  (closed in close())
        self.hash = hashlib.sha256()
        self.index = np.zeros((count, 4), np.int64)
        self.count = 0
        self.offset = 0

    def add(self, record: bytes, height: int, width: int) -> None:
        if self.count >= len(self.index):
            raise ValueError(f"split {self.split!r}: more than the {len(self.index)} images its metadata lists")
        self.file.write(record)
        self.hash.update(record)
        self.index[self.count] = (self.offset, len(record), height, width)
        self.offset += len(record)
        self.count += 1

    def close(self) -> dict[str, dict]:
        """Finish the shard and write its index; the two files' sizes and checksums."""
        self.file.close()
        if self.count != len(self.index):
            raise ValueError(f"split {self.split!r}: {self.count} images written, its metadata lists {len(self.index)}")
        np.save(self.directory / index_file(self.split), self.index)
        return {images_file(self.split): {"bytes": self.offset, "sha256": self.hash.hexdigest()},
                index_file(self.split): integrity.file_record(self.directory / index_file(self.split))}


def write_prepared(out_dir: str | Path, splits: dict[str, tuple[np.ndarray, pd.DataFrame]], info: dict,
                   storage: Storage) -> None:
    """Write in-memory splits ``{name: (uint8 [N,H,W,3], metadata)}`` atomically, stored as ``storage`` says.

    The images are stored at their size (the caller builds them at ``storage.size``).
    """
    for name, (images, meta) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"split {name!r}: expected uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        if len(images) != len(meta):
            raise ValueError(f"split {name!r}: {len(images)} images but {len(meta)} metadata rows")

    def fill(name: str, writer: SplitWriter) -> None:
        for image in splits[name][0]:
            writer.add(*encode(image, storage))

    write_streaming(out_dir, {n: m for n, (_, m) in splits.items()}, fill, info, storage)


def write_streaming(out_dir: str | Path, metas: dict[str, pd.DataFrame], fill: Callable[[str, SplitWriter], None],
                    info: dict, storage: Storage, files: dict[str, Path] | None = None) -> None:
    """Write every split by letting ``fill(name, writer)`` add its records in order; atomic as a whole.

    Records stream to disk, so a split larger than RAM (ImageNet) goes through. The directory
    appears complete, with its index and checksums, or not at all.
    """
    with atomic_path(out_dir, is_dir=True) as tmp:
        records: dict[str, dict] = {}
        frames = []
        for name, meta in metas.items():
            writer = SplitWriter(tmp, name, len(meta))
            try:
                fill(name, writer)
            finally:
                writer.file.close()
            records.update(writer.close())
            meta = meta.assign(split=name, index=np.arange(len(meta)))
            frames.append(meta[METADATA_COLUMNS + [c for c in meta.columns if c not in METADATA_COLUMNS]])
        pd.concat(frames, ignore_index=True).to_csv(tmp / integrity.METADATA, index=False)
        records[integrity.METADATA] = integrity.file_record(tmp / integrity.METADATA)
        for rel, src in (files or {}).items():
            dst = tmp / "files" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            records[f"files/{rel}"] = integrity.file_record(dst)
        info = {**info, "format": FORMAT, "storage": asdict(storage), "num_classes": len(info["classes"]),
                "splits": {n: int(len(m)) for n, m in metas.items()},   # split order matters
                "records": dict(sorted(records.items()))}
        (tmp / integrity.INFO).write_text(json.dumps(integrity.seal(info), indent=2) + "\n")


def verify_requested() -> bool:
    """``PIPELINE_VERIFY_DATA=1``: every open of a prepared dataset also checks every file's SHA-256."""
    return os.environ.get("PIPELINE_VERIFY_DATA", "").lower() in ("1", "true", "yes")


class PreparedDataset:
    """Read access to a prepared dataset directory, checked on open (:mod:`pipeline.data.integrity`).

    ``verify``: also compare every file's SHA-256 with ``info.json`` (default: ``PIPELINE_VERIFY_DATA``).
    """

    def __init__(self, root: str | Path, verify: bool | None = None):
        self.root = Path(root)
        self.info = integrity.load_info(self.root)
        # Names stay strings: a domain or group called "0" must not become a number.
        self.metadata = pd.read_csv(self.root / integrity.METADATA, dtype={"domain": str, "group": str, "source": str},
                                    keep_default_na=False)
        integrity.check_dataset(self.root, self.info, self.metadata)
        if verify if verify is not None else verify_requested():
            integrity.verify_checksums(self.root, self.info)

    @property
    def num_classes(self) -> int:
        return len(self.info["classes"])

    @property
    def storage(self) -> Storage:
        return Storage(**self.info["storage"])

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
        index = integrity.open_index(self.root, stored, self.info)
        path = self.root / images_file(stored)
        data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.empty(0, np.uint8)
        meta = self.metadata[self.metadata["split"] == stored].sort_values("index").reset_index(drop=True)
        return SplitData(ImageStore(data, index, self.info["storage"]["encoding"]), meta)
