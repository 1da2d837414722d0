"""Caltech-256 (Griffin et al. 2007) with the per-class random split of Li et al. (2020), "Caltech-256-60".

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, ``256_ObjectCategories.tar`` unpacked into
``<root>/caltech256/`` (torchvision's layout). Class folders are ``NNN.<name>`` numbered 001..257;
``257.clutter`` is the background class. Images are the ``.jpg`` files directly in a class folder, as
torchvision's ``Caltech256`` counts them (sub-folders and other files, such as the stray
``056.dog/greg/`` of some copies, are not images of the class).

Caltech-256 has no official split. Li et al. (2020), Table 1: "we randomly sampled 60 images for
each class following the procedure used in (Li et al., 2018)", 256 classes, 15,360 training and
15,189 test images. Implemented as: per class, a seeded random ``train_per_class`` (60) images
for training and the rest (or ``test_per_class`` of the rest) for test; classes 001..256 (the
clutter folder only with ``clutter: true``). The random draw of class ``k`` uses
``numpy.random.default_rng([split_seed, k])`` over the class's file names in sorted order, so it
depends only on ``split_seed`` and that folder's files, not on the machine or the other folders.
Then, as for every source without a validation split, ``id_val_fraction`` of each class's training
images go to ``id_val`` (seeded by ``seed``, so the test set never depends on the held-out choice).

Counts on the full dataset (30,607 images; clutter 827): 256 classes -> 15,360 training
(= Table 1) and 14,420 test images. Table 1's 15,189 test images do not follow from 256 classes;
they come close to all 257 folders (``clutter: true``: 15,420 training, 15,187 test), which
contradicts its class and training counts. The default follows the class and training counts;
``test_per_class: 20`` gives the 20-test-images-per-class protocol of Li et al. (2018), L2-SP.

Keys and defaults: ``train_per_class: 60``, ``test_per_class: null`` (all the rest), ``clutter:
false``, ``split_seed: 0``, ``id_val_fraction: 0.1`` (6 of the 60), ``seed: 0``. A class with fewer
images than ``train_per_class`` (+ ``test_per_class``) stops preparation, as does a gap in the
numbering of the class folders (a missing folder).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest, list_images
from pipeline.data.sources.official_split import Context, official_split, rows

SOURCE = "caltech256"
FOLDER = "caltech256/256_ObjectCategories"
DEFAULTS = {"train_per_class": 60, "test_per_class": None, "clutter": False, "split_seed": 0}
CLUTTER = 257
CLASS_FOLDER = re.compile(r"(\d{3})\.(.+)")
LAYOUT = """
<root>/caltech256/256_ObjectCategories/
    001.ak47/001_0001.jpg ...      one folder per class, NNN.<name>, numbered 001..257
    ...
    257.clutter/257_0001.jpg ...   the background class (used with clutter: true)
"""
ORIGIN = ("Caltech-256 (Griffin, Holub and Perona 2007), https://data.caltech.edu/records/nyy15-4j048: unpack "
          "256_ObjectCategories.tar into <root>/caltech256/")


def manifest(name: str, cfg: dict) -> Manifest:
    """Seeded per-class train/test draw over the class folders, then the usual id_val hold-out."""
    settings = {**DEFAULTS, **cfg}
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "Caltech-256 folder not found")
    folders = _class_folders(ctx, base, bool(settings["clutter"]))
    n_train = int(settings["train_per_class"])
    n_test = None if settings["test_per_class"] is None else int(settings["test_per_class"])
    if n_train < 1 or (n_test is not None and n_test < 1):
        raise ValueError(f"{name}: train_per_class and test_per_class must be positive")
    frames = []
    for label, (number, folder) in enumerate(folders.items()):
        files = list_images(folder, (".jpg",))
        need = n_train + (n_test or 1)
        if len(files) < need:
            raise ctx.broken(folder, f"class folder holds {len(files)} .jpg images, fewer than the {need} that "
                                     f"train_per_class {n_train}" + (f" + test_per_class {n_test}" if n_test else
                                                                    " + at least one test image") + " need")
        order = np.random.default_rng([int(settings["split_seed"]), number]).permutation(len(files))
        train, test = order[:n_train], order[n_train:n_train + n_test if n_test else None]
        for split, pick in (("train", np.sort(train)), ("id_test", np.sort(test))):
            frames.append(rows(split, np.full(len(pick), label), [files[i] for i in pick], folder,
                               [f"file {files[i].name}" for i in pick]))
    classes = [f.name for f in folders.values()]
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE)


def _class_folders(ctx: Context, base: Path, clutter: bool) -> dict[int, Path]:
    """``{class number: folder}`` for 1..K (K = the highest number but clutter); numbering without gaps."""
    found: dict[int, Path] = {}
    for p in sorted(base.iterdir()):
        match = CLASS_FOLDER.fullmatch(p.name)
        if p.is_dir() and match:
            number = int(match.group(1))
            if number in found:
                raise ctx.broken(p, f"two class folders numbered {number:03d}: {found[number].name} and {p.name}")
            found[number] = p
    objects = sorted(n for n in found if n != CLUTTER)
    if not objects:
        raise ctx.broken(base / "001.<name>", "no class folders (NNN.<name>) found")
    gaps = sorted(set(range(1, objects[-1] + 1)) - set(objects))
    if gaps:
        raise ctx.broken(base / f"{gaps[0]:03d}.<name>", f"class folder {gaps[0]:03d} not found (the folders are "
                                                         f"numbered 001..{objects[-1]:03d})")
    if clutter:
        if CLUTTER not in found:
            raise ctx.broken(base / "257.clutter", "clutter folder not found (clutter: true)")
        objects.append(CLUTTER)
    return {n: found[n] for n in objects}
