"""Shared by the transfer-learning targets of Li et al. (ICLR 2020): one official train/test split, no OOD split.

Stanford Dogs, Caltech-256, MIT Indoor-67, CUB-200-2011, Stanford Cars, FGVC-Aircraft and Oxford
Flowers-102 (one module each in this package) are image-classification targets with an official
train (or train+val) / test split and no distribution shift. Their split mapping is the same:

* ``train`` / ``id_val``: the official training images, with a seeded, per-class stratified
  ``id_val_fraction`` held out as ``id_val`` (none of them has a validation split the paper kept:
  Li et al. merge Aircraft's and Flowers' val into train), so train + id_val = the paper's training set;
* ``id_test``: the official test images (the paper reports its error on them);
* no ``ood_val`` / ``ood_test``: the prepared dataset has ID splits only, and its ``info.json``
  says so (``"ood": false``). Evaluation scores the splits present; the report has no OOD quantity
  for such a dataset: its ID cells, intervals and baseline comparisons are filled, its OOD cells
  are empty (``--``) and its effective-robustness fit has no points.

``domain`` and ``group`` are the source's name (one domain). Defaults: ``id_val_fraction: 0.1``
(as the other sources without a validation split), ``seed: 0``.

Every list entry is checked before anything is decoded: a missing split file, class folder or
listed image stops preparation with a :class:`~pipeline.data.sources.base.MissingDataError` whose
first line names the file; an image that cannot be decoded stops it (in :mod:`pipeline.data.decode`)
with a :class:`~pipeline.data.sources.base.CorruptImageError` naming it. Nothing is written then.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources.base import Manifest, MissingDataError, holdout

DEFAULTS = {"id_val_fraction": 0.1, "seed": 0}
# Columns of the rows a reader lists besides split and label: the image file, and where it was listed.
LIST_COLUMNS = ["source", "list_file", "where"]
INFO = {"ood": False}   # info.json: this dataset has no OOD splits


@dataclass(frozen=True)
class Context:
    """What an error message about one dataset entry says besides the problem: name, layout, origin."""

    name: str
    layout: str
    origin: str

    def broken(self, where: str | Path, detail: str) -> MissingDataError:
        return MissingDataError(self.name, where, self.layout, self.origin, detail)

    def require(self, path: Path, what: str = "file not found") -> Path:
        if not path.exists():
            raise self.broken(path, what)
        return path


def read_lines(ctx: Context, path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-empty lines of a split/label text file (CRLF tolerated)."""
    ctx.require(path, "split file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ctx.broken(path, f"unreadable text file ({type(e).__name__}: {e})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ctx.broken(path, "file lists nothing")
    return lines


def read_mat(ctx: Context, path: Path, keys: tuple[str, ...], what: str = "split file not found") -> dict:
    """The named variables of a MATLAB ``.mat`` file (``scipy.io.loadmat``, squeezed); each must be present."""
    from scipy.io import loadmat

    ctx.require(path, what)
    try:
        mat = loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises many types for a truncated or foreign file; all mean "broken"
        raise ctx.broken(path, f"unreadable .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ctx.broken(path, f".mat file lacks variable(s) {missing} (has {sorted(k for k in mat if k[0] != '_')})")
    return {k: mat[k] for k in keys}


def mat_strings(value) -> list[str]:
    """A MATLAB cell array / char array of strings, loaded squeezed, as a flat list of Python strings."""
    arr = np.asarray(value, dtype=object).reshape(-1)
    return [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else "" for v in arr]


def mat_ints(ctx: Context, path: Path, key: str, value) -> np.ndarray:
    """A MATLAB numeric vector as int64 (it must hold whole numbers)."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ctx.broken(path, f".mat variable {key!r} is not numeric") from None
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ctx.broken(path, f".mat variable {key!r} holds values that are not whole numbers")
    return arr.astype(np.int64)


def rows(split: str, labels, sources, list_file: Path | str, where) -> pd.DataFrame:
    """Listed images of one split: label, absolute image path, the list file and the place in it."""
    return pd.DataFrame({"split": split, "label": np.asarray(labels, dtype=np.int64),
                         "source": [str(s) for s in sources], "list_file": str(list_file),
                         "where": [str(w) for w in where]})


def check_images(ctx: Context, records: pd.DataFrame, folder_kind: str = "class folder") -> None:
    """Every listed image exists: one directory listing per folder, not one ``stat`` per image.

    A missing folder is reported as a ``folder_kind`` listed in the list file; a missing image names
    the image, the list file and where it is listed (line or entry).
    """
    paths = records["source"].map(Path)
    for folder, part in records.groupby(paths.map(lambda p: str(p.parent)), sort=True):
        if not os.path.isdir(folder):
            raise ctx.broken(folder, f"{folder_kind} listed in {part['list_file'].iloc[0]} not found")
        present = set(os.listdir(folder))
        absent = part[~part["source"].map(lambda s: Path(s).name).isin(present)]
        if len(absent):
            first = absent.iloc[0]
            raise ctx.broken(first["source"], f"image listed in {first['list_file']} ({first['where']}) not found "
                                              f"({len(absent)} of the {len(part)} images listed in {folder} are "
                                              "missing)")


def check_labels(ctx: Context, records: pd.DataFrame, num_classes: int) -> None:
    bad = records[(records["label"] < 0) | (records["label"] >= num_classes)]
    if len(bad):
        first = bad.iloc[0]
        raise ctx.broken(first["list_file"], f"label {first['label']} of {first['where']} is outside the "
                                             f"{num_classes} classes")


def official_split(ctx: Context, records: pd.DataFrame, classes: list[str], cfg: dict, domain: str,
                   folder_kind: str = "class folder") -> Manifest:
    """Manifest of ``records`` (splits ``train`` and ``id_test``): images checked, ``id_val`` held out of train."""
    cfg = {**DEFAULTS, **cfg}
    for split in ("train", "id_test"):
        if not (records["split"] == split).any():
            raise ctx.broken(records["list_file"].iloc[0] if len(records) else ctx.name,
                             f"no {'training' if split == 'train' else 'test'} images listed")
    records = records.reset_index(drop=True)
    check_labels(ctx, records, len(classes))
    check_images(ctx, records, folder_kind)
    train = records["split"] == "train"
    records = pd.concat([holdout(records[train].reset_index(drop=True), float(cfg["id_val_fraction"]),
                                 int(cfg["seed"]), into="id_val"), records[~train]], ignore_index=True)
    records = records.assign(domain=domain, group=domain)
    return Manifest(records=records[["split", "label", "domain", "group", "source"]], classes=list(classes),
                    info=dict(INFO))
