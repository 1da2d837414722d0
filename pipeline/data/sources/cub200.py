"""CUB-200-2011 (Wah et al. 2011): 200 bird species, the official 5,994 / 5,794 split.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, ``CUB_200_2011.tgz`` unpacked into ``<root>/``
(it holds ``CUB_200_2011/``). The metadata files are read as the dataset's README describes them:
``images.txt`` (``<image id> <class folder>/<file>``), ``image_class_labels.txt`` (``<image id>
<class id>``, 1..200), ``train_test_split.txt`` (``<image id> <1 = train, 0 = test>``) and ``classes.txt``
(``<class id> <class folder>``).

Classes: the ``classes.txt`` names (``001.Black_footed_Albatross``, ...) in class-id order; label =
class id - 1. An image whose folder is not its class's, an image id missing from one of the files or
listed twice, and an unknown class id all stop preparation. Bounding boxes and parts are not used.

Splits: :mod:`pipeline.data.sources.official_split` (is_training_image 1 -> train / id_val, 0 ->
id_test, no OOD); Table 1 of Li et al. (2020): 5,994 training, 5,794 test images.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, official_split, read_lines

SOURCE = "cub200"
FOLDER = "CUB_200_2011"
LAYOUT = """
<root>/CUB_200_2011/
    images/<class folder>/<file>.jpg   e.g. images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
    images.txt                         <image id> <class folder>/<file>
    image_class_labels.txt             <image id> <class id>
    train_test_split.txt               <image id> <1 = train, 0 = test>: the official 5,994 / 5,794 split
    classes.txt                        <class id> <class folder>
"""
ORIGIN = ("CUB-200-2011 (Wah et al. 2011), https://www.vision.caltech.edu/datasets/cub_200_2011/ "
          "(https://data.caltech.edu/records/65de6-vp158): unpack CUB_200_2011.tgz into <root>/")
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def manifest(name: str, cfg: dict) -> Manifest:
    """The official split of CUB-200-2011, the four metadata files cross-checked before any image is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "CUB-200-2011 folder not found")
    images = ctx.require(base / "images", "image folder not found")
    for f in FILES:
        ctx.require(base / f, "metadata file not found")
    paths, labels, is_train, class_names = (_table(ctx, base / f) for f in FILES)
    try:
        class_ids = sorted(class_names, key=int)
    except ValueError:
        raise ctx.broken(base / "classes.txt", "class ids must be integers") from None
    classes = [class_names[k][0] for k in class_ids]
    index = {k: i for i, k in enumerate(class_ids)}
    records = []
    for image_id, (rel, lineno) in paths.items():
        where = f"line {lineno}"
        label_entry, split_entry = labels.get(image_id), is_train.get(image_id)
        for entry, f in ((label_entry, "image_class_labels.txt"), (split_entry, "train_test_split.txt")):
            if entry is None:
                raise ctx.broken(base / f, f"image id {image_id} ({rel}, images.txt {where}) is not listed")
        if label_entry[0] not in index:
            raise ctx.broken(f"{base / 'image_class_labels.txt'}:{label_entry[1]}",
                             f"class id {label_entry[0]} is not in classes.txt")
        label = index[label_entry[0]]
        if rel.split("/", 1)[0] != classes[label]:
            raise ctx.broken(f"{base / 'images.txt'}:{lineno}", f"image {rel} lies outside the folder of its class "
                                                                f"{classes[label]!r} (image_class_labels.txt line "
                                                                f"{label_entry[1]})")
        if split_entry[0] not in ("0", "1"):
            raise ctx.broken(f"{base / 'train_test_split.txt'}:{split_entry[1]}",
                             f"is_training_image must be 0 or 1, got {split_entry[0]!r}")
        records.append(("train" if split_entry[0] == "1" else "id_test", label, images / rel, where))
    for f, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        extra = sorted(set(table) - set(paths), key=lambda k: table[k][1])
        if extra:
            raise ctx.broken(f"{base / f}:{table[extra[0]][1]}", f"image id {extra[0]} is not in images.txt")
    frame = pd.DataFrame(records, columns=["split", "label", "source", "where"])
    frame = frame.assign(source=frame["source"].map(str), list_file=str(base / "images.txt"))
    return official_split(ctx, frame, classes, cfg, SOURCE)


def _table(ctx: Context, path: Path) -> dict[str, tuple[str, int]]:
    """``{first field: (the rest of the line, line number)}`` of a metadata file; ids must be unique."""
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in read_lines(ctx, path):
        key, _, value = line.partition(" ")
        if not value.strip():
            raise ctx.broken(f"{path}:{lineno}", f"malformed line {line!r} (expected <id> <value>)")
        if key in out:
            raise ctx.broken(f"{path}:{lineno}", f"id {key} listed twice (first on line {out[key][1]})")
        out[key] = (value.strip(), lineno)
    return out
