"""Checks that a prepared dataset is what ``prepare_data`` wrote: cheap ones on every open, checksums on request.

``prepare_data`` records, in ``info.json``, every file's size and SHA-256 (``records``) and seals the
file with a checksum of its own content (``checksum``). On open (:class:`pipeline.data.shards.PreparedDataset`):

* the format version (data prepared by an older version is never read as if it were current);
* ``info.json``'s checksum: an edit (a split or a class dropped by hand) is caught;
* every recorded file exists with its recorded size; no shard lies there that ``info.json`` does not list;
* ``metadata.csv``: its split list, its row count per split and its row numbers match ``info.json``,
  every label lies in ``[0, number of classes)``;
* when a split is opened, its index: dtype, shape (the split's count x 4) and offsets that tile the
  shard exactly (raw records: height x width x 3 bytes each).

:func:`verify_checksums` (``python -m pipeline verify-data``, or ``PIPELINE_VERIFY_DATA=1``) also
hashes every file. Each failure is one :class:`PreparedDataError` line naming the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.errors import PreparedDataError

FORMAT = 2   # 1: uint8 [N, S, S, 3] squares in {split}.npy, no index or checksums
INFO, METADATA = "info.json", "metadata.csv"
_SHARD_SUFFIXES = (".images", ".index.npy", ".npy")


def images_file(split: str) -> str:
    return f"{split}.images"


def index_file(split: str) -> str:
    return f"{split}.index.npy"


def file_record(path: Path) -> dict:
    """``{"bytes", "sha256"}`` of a file, as ``info.json`` records it."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _checksum(info: dict) -> str:
    body = {k: v for k, v in info.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal(info: dict) -> dict:
    """``info`` with its ``checksum``: the SHA-256 of the rest, keys sorted."""
    return {**info, "checksum": _checksum(info)}


def fail(root: Path, path: Path | str, what: str) -> PreparedDataError:
    """The one-line error: the file, what is wrong, how to re-prepare the dataset."""
    return PreparedDataError(f"{path}: {what}; re-prepare the dataset: delete {root} and run prepare_data again "
                             f"(python -m pipeline prepare_data --dataset {root.name}, or the whole pipeline)")


def load_info(root: Path) -> dict:
    """``info.json`` of ``root``, checked: current format and intact checksum."""
    path = root / INFO
    if not path.is_file():
        raise FileNotFoundError(
            f"prepared dataset not found: {path} is missing. Expected {root}/{{info.json, metadata.csv, "
            "<split>.images, <split>.index.npy}, written by the prepare_data stage.")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(root, path, f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format", 1) if isinstance(info, dict) else "?"
        raise fail(root, path, f"prepared in format {found} (uint8 squares), this version reads format {FORMAT} "
                               "(aspect-preserving shards with an index)")
    if info.get("checksum") != _checksum(info):
        raise fail(root, path, "edited after preparation (its checksum does not match its content)")
    if int(info["num_classes"]) != len(info["classes"]):
        raise fail(root, path, f"num_classes {info['num_classes']} but {len(info['classes'])} class names")
    return info


def check_dataset(root: Path, info: dict, metadata: pd.DataFrame) -> None:
    """The cheap checks of an opened dataset (sizes, split lists, counts, labels); raise on the first problem."""
    records = info["records"]
    for rel, rec in records.items():
        path = root / rel
        if not path.is_file():
            raise fail(root, path, "missing (listed in info.json)")
        if path.stat().st_size != rec["bytes"]:
            raise fail(root, path, f"{path.stat().st_size} bytes, info.json records {rec['bytes']} (truncated or "
                                   "modified after preparation)")
    splits = list(info["splits"])
    for split in splits:
        for rel in (images_file(split), index_file(split)):
            if rel not in records:
                raise fail(root, root / INFO, f"split {split!r} has no record of {rel}")
    for path in sorted(root.iterdir()):
        split = next((path.name[:-len(s)] for s in _SHARD_SUFFIXES if path.name.endswith(s)), None)
        if split is not None and split not in splits:
            raise fail(root, path, f"a shard of split {split!r}, which info.json does not list (splits: "
                                   f"{', '.join(splits)}; a split dropped from info.json, or two preparations mixed)")
    found = list(dict.fromkeys(metadata["split"].astype(str)))
    if set(found) != set(splits):
        raise fail(root, root / METADATA, f"holds splits {sorted(found)}, info.json lists {sorted(splits)}")
    counts = metadata["split"].astype(str).value_counts()
    for split, n in info["splits"].items():
        rows = metadata.loc[metadata["split"] == split, "index"].to_numpy()
        if int(counts.get(split, 0)) != int(n) or not np.array_equal(np.sort(rows), np.arange(int(n))):
            raise fail(root, root / METADATA, f"split {split!r} has {int(counts.get(split, 0))} rows (numbered "
                                              f"{_span(rows)}), info.json records {n} images")
    labels = pd.to_numeric(metadata["label"], errors="coerce").to_numpy()
    k = len(info["classes"])
    bad = ~np.isfinite(labels) | (labels < 0) | (labels >= k) | (labels != np.round(labels))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise fail(root, root / METADATA, f"label {metadata['label'].iloc[row]} in row {row + 2} does not fit "
                                          f"the {k} classes of info.json")
    for alias, target in (info.get("aliases") or {}).items():
        if target not in splits:
            raise fail(root, root / INFO, f"alias {alias!r} names the split {target!r}, which is not stored")


def _span(rows: np.ndarray) -> str:
    return f"{rows.min()}..{rows.max()}" if len(rows) else "none"


def open_index(root: Path, split: str, info: dict) -> np.ndarray:
    """The split's index (memory-mapped), checked against ``info.json`` and its shard."""
    path = root / index_file(split)
    try:
        index = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise fail(root, path, f"not a readable index ({e})") from None
    n = int(info["splits"][split])
    if index.dtype != np.int64 or index.shape != (n, 4):
        raise fail(root, path, f"{index.dtype} {tuple(index.shape)}, expected int64 ({n}, 4) for the {n} images "
                               f"info.json records")
    size = int(info["records"][images_file(split)]["bytes"])
    offset, length, height, width = (np.asarray(index[:, j]) for j in range(4))
    ends = offset + length
    if n and (offset[0] != 0 or ends[-1] != size or (n > 1 and not np.array_equal(offset[1:], ends[:-1]))
              or (length <= 0).any()):
        raise fail(root, path, f"its offsets do not tile {images_file(split)} ({size} bytes)")
    if n and ((height <= 0).any() or (width <= 0).any()):
        raise fail(root, path, "an image of zero size")
    if info["storage"]["encoding"] == "raw" and not np.array_equal(length, height * width * 3):
        row = int(np.flatnonzero(length != height * width * 3)[0])
        raise fail(root, path, f"record {row} holds {length[row]} bytes, not {height[row]}x{width[row]}x3 pixels")
    return index


def verify_checksums(root: Path, info: dict) -> None:
    """Hash every recorded file and compare with ``info.json`` (reads the whole dataset once)."""
    for rel, rec in info["records"].items():
        if file_record(root / rel)["sha256"] != rec["sha256"]:
            raise fail(root, root / rel, "its SHA-256 differs from the one recorded at preparation (modified or "
                                         "corrupted on disk)")
