"""FGVC-Aircraft 2013b (Maji et al. 2013): 100 aircraft variants, the official trainval 6,667 / test 3,333 split.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, ``fgvc-aircraft-2013b.tar.gz`` unpacked into
``<root>/`` (it holds ``fgvc-aircraft-2013b/``; torchvision's layout). ``images_variant_<split>.txt``
lines are ``<image id> <variant>`` (the variant may contain spaces, e.g. ``Falcon 2000``); images are
``data/images/<image id>.jpg``.

Classes: the variants in the order of ``variants.txt`` (label = line index, as torchvision's
``FGVCAircraft``); a listed variant that ``variants.txt`` lacks stops preparation. Annotation level:
variant (100 classes), as Li et al. (2020). The images keep their 20-pixel copyright banner at the
bottom, as in torchvision and the paper (no crop is mentioned).

Splits: :mod:`pipeline.data.sources.official_split`. Li et al. (2020), Table 1: "For the Aircraft and
Flower dataset, we combined the original training set and validation set": ``images_variant_trainval.txt``
(= train + val) -> train / id_val, ``images_variant_test.txt`` -> id_test, no OOD; 6,667 training,
3,333 test images.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, official_split, read_lines, rows

SOURCE = "fgvc_aircraft"
FOLDER = "fgvc-aircraft-2013b/data"
LAYOUT = """
<root>/fgvc-aircraft-2013b/data/
    images/<image id>.jpg              e.g. images/1025794.jpg
    images_variant_trainval.txt        <image id> <variant>: the official train + val images (6,667)
    images_variant_test.txt            the official test images (3,333)
    variants.txt                       the 100 variants, one per line (label order)
"""
ORIGIN = ("FGVC-Aircraft 2013b (Maji et al. 2013), https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/: unpack "
          "fgvc-aircraft-2013b.tar.gz into <root>/")


def manifest(name: str, cfg: dict) -> Manifest:
    """The official trainval/test split of FGVC-Aircraft, every listed image checked before any is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "FGVC-Aircraft folder not found")
    images = ctx.require(base / "images", "image folder not found")
    lists = {"train": base / "images_variant_trainval.txt", "id_test": base / "images_variant_test.txt"}
    for path in [base / "variants.txt", *lists.values()]:
        ctx.require(path, "split file not found")
    classes = [line for _, line in read_lines(ctx, base / "variants.txt")]
    if len(set(classes)) != len(classes):
        raise ctx.broken(base / "variants.txt", "a variant is listed twice")
    index = {c: i for i, c in enumerate(classes)}
    frames = []
    for split, path in lists.items():
        ids, labels, where = [], [], []
        for lineno, line in read_lines(ctx, path):
            image_id, _, variant = line.partition(" ")
            if not variant.strip():
                raise ctx.broken(f"{path}:{lineno}", f"malformed line {line!r} (expected <image id> <variant>)")
            if variant.strip() not in index:
                raise ctx.broken(f"{path}:{lineno}", f"variant {variant.strip()!r} is not in variants.txt")
            ids.append(image_id)
            labels.append(index[variant.strip()])
            where.append(f"line {lineno}")
        frames.append(rows(split, labels, [images / f"{i}.jpg" for i in ids], path, where))
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE, "image folder")
