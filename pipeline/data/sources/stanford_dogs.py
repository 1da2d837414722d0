"""Stanford Dogs (Khosla et al., CVPR-W 2011): 120 breeds, the official 12,000 / 8,580 split.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, ``images.tar`` and ``lists.tar`` of
http://vision.stanford.edu/aditya86/ImageNetDogs/ unpacked into ``<root>/stanford_dogs/``
(``lists.tar`` holds the ``.mat`` files at its top level; they go into ``lists/``).
``train_list.mat`` / ``test_list.mat`` hold ``file_list`` (``<wnid>-<breed>/<wnid>_<n>.jpg``,
relative to ``Images/``) and ``labels`` (1..120).

Classes: the breed folders (``n02085620-Chihuahua``, ...) in label order (label = ``labels`` - 1).
A folder given two labels, or a label two folders, stops preparation.

Splits: :mod:`pipeline.data.sources.official_split` (train_list -> train / id_val, test_list ->
id_test, no OOD); Table 1 of Li et al. (2020): 12,000 training, 8,580 test images.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, mat_ints, mat_strings, official_split, read_mat, rows

SOURCE = "stanford_dogs"
FOLDER = "stanford_dogs"
LAYOUT = """
<root>/stanford_dogs/
    Images/<wnid>-<breed>/<wnid>_<n>.jpg    e.g. Images/n02085620-Chihuahua/n02085620_5927.jpg (images.tar)
    lists/train_list.mat                    file_list, labels (1..120): the official 12,000 training images
    lists/test_list.mat                     the official 8,580 test images (lists.tar)
"""
ORIGIN = ("Stanford Dogs (Khosla et al. 2011), http://vision.stanford.edu/aditya86/ImageNetDogs/: unpack images.tar "
          "into <root>/stanford_dogs/ (it holds Images/) and lists.tar into <root>/stanford_dogs/lists/")


def manifest(name: str, cfg: dict) -> Manifest:
    """The official split of Stanford Dogs, every listed image checked before any is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "Stanford Dogs folder not found")
    images = ctx.require(base / "Images", "image folder not found")
    lists = {split: base / "lists" / f"{part}_list.mat" for split, part in (("train", "train"), ("id_test", "test"))}
    for path in lists.values():   # both up front: a missing one is reported before either is parsed
        ctx.require(path, "split file not found")
    frames: list[pd.DataFrame] = []
    label_of: dict[str, tuple[int, str]] = {}
    for split, path in lists.items():
        mat = read_mat(ctx, path, ("file_list", "labels"))
        files, labels = mat_strings(mat["file_list"]), mat_ints(ctx, path, "labels", mat["labels"]) - 1
        if len(files) != len(labels):
            raise ctx.broken(path, f"{len(files)} files but {len(labels)} labels")
        for i, (rel, label) in enumerate(zip(files, labels), start=1):
            folder = rel.split("/", 1)[0]
            seen, where = label_of.setdefault(folder, (int(label), f"{path.name} entry {i}"))
            if seen != label:
                raise ctx.broken(path, f"entry {i} gives class folder {folder!r} label {label + 1}, "
                                       f"but {where} gives it {seen + 1}")
        frames.append(rows(split, labels, [images / f for f in files], path, [f"entry {i}" for i in
                                                                              range(1, len(files) + 1)]))
    classes = _classes(ctx, label_of, lists["train"])
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE)


def _classes(ctx: Context, label_of: dict[str, tuple[int, str]], path: Path) -> list[str]:
    """Breed folders in label order: one folder per label, labels 0..K-1 without gaps."""
    by_label: dict[int, str] = {}
    for folder, (label, where) in label_of.items():
        other = by_label.setdefault(label, folder)
        if other != folder:
            raise ctx.broken(path, f"label {label + 1} names two class folders, {other!r} and {folder!r} ({where})")
    if sorted(by_label) != list(range(len(by_label))):
        missing = sorted(set(range(max(by_label) + 1)) - set(by_label))
        raise ctx.broken(path, f"no image is labelled {missing[0] + 1} (labels must be 1..K)")
    return [by_label[k] for k in range(len(by_label))]
