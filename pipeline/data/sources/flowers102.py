"""Oxford Flowers-102 (Nilsback and Zisserman 2008): 102 species, train + val 2,040 / test 6,149.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, torchvision's ``Flowers102`` layout:
``102flowers.tgz`` (it holds ``jpg/``) unpacked into ``<root>/flowers-102/``, beside ``imagelabels.mat``
(``labels``: the class, 1..102, of image ``k`` = ``jpg/image_<k:05d>.jpg``) and ``setid.mat``
(``trnid``, ``valid``, ``tstid``: 1-based image numbers of the official train, val and test sets).

Classes: the dataset ships no names, so a class is its official number as a string, ``"1"`` ..
``"102"`` (label = number - 1); the zero-shot prompt file maps them to CLIP's flower names.

Splits: :mod:`pipeline.data.sources.official_split`. Li et al. (2020), Table 1: "For the Aircraft and
Flower dataset, we combined the original training set and validation set": ``trnid`` + ``valid`` ->
train / id_val, ``tstid`` -> id_test, no OOD; 2,040 training, 6,149 test images. An image number
outside ``labels`` or in two of the sets stops preparation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, mat_ints, official_split, read_mat, rows

SOURCE = "flowers102"
FOLDER = "flowers-102"
SETS = {"trnid": "train", "valid": "train", "tstid": "id_test"}
LAYOUT = """
<root>/flowers-102/
    jpg/image_<00001..08189>.jpg     the images (102flowers.tgz)
    imagelabels.mat                  labels: class 1..102 of each image
    setid.mat                        trnid, valid, tstid: the official train (1,020), val (1,020), test (6,149)
"""
ORIGIN = ("Oxford Flowers-102 (Nilsback and Zisserman 2008), https://www.robots.ox.ac.uk/~vgg/data/flowers/102/: "
          "unpack 102flowers.tgz into <root>/flowers-102/ and save imagelabels.mat and setid.mat beside jpg/")


def manifest(name: str, cfg: dict) -> Manifest:
    """Train + val against test of Flowers-102, every listed image checked before any is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "Flowers-102 folder not found")
    images = ctx.require(base / "jpg", "image folder not found")
    labels_path, sets_path = base / "imagelabels.mat", base / "setid.mat"
    for path in (labels_path, sets_path):
        ctx.require(path, "split file not found")
    labels = mat_ints(ctx, labels_path, "labels", read_mat(ctx, labels_path, ("labels",))["labels"])
    if not len(labels) or labels.min() < 1:
        raise ctx.broken(labels_path, "labels must be class numbers 1..K")
    num_classes = int(labels.max())
    sets = read_mat(ctx, sets_path, tuple(SETS))
    seen: dict[int, str] = {}
    frames = []
    for key, split in SETS.items():
        ids = mat_ints(ctx, sets_path, key, sets[key])
        outside = ids[(ids < 1) | (ids > len(labels))]
        if len(outside):
            raise ctx.broken(sets_path, f"{key} lists image {outside[0]}, but imagelabels.mat labels images "
                                        f"1..{len(labels)}")
        numbers, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ctx.broken(sets_path, f"{key} lists image {numbers[counts > 1][0]} twice")
        for i in ids:
            other = seen.setdefault(int(i), key)
            if other != key:
                raise ctx.broken(sets_path, f"image {i} is in both {other} and {key}")
        frames.append(rows(split, labels[ids - 1] - 1, [images / f"image_{i:05d}.jpg" for i in ids], sets_path,
                           [f"{key} image {i}" for i in ids]))
    classes = [str(k) for k in range(1, num_classes + 1)]
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE, "image folder")
