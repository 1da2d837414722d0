"""MIT Indoor-67 (Quattoni and Torralba, CVPR 2009): 67 scene classes, the official 5,360 / 1,340 split.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`: ``indoorCVPR_09.tar`` (it holds ``Images/``)
unpacked into ``<root>/mit_indoor67/``, beside the official split lists ``TrainImages.txt`` and
``TestImages.txt`` of http://web.mit.edu/torralba/www/indoor.html (80 training and 20 test images per
class; each line is ``<class>/<file>``, relative to ``Images/``).

Classes: the class folders named in the two lists, sorted (``airport_inside``, ``artstudio``, ...);
label = index. Images are decoded by content, whatever their extension says. A class of the test list
that the training list lacks stops preparation.

Splits: :mod:`pipeline.data.sources.official_split` (TrainImages -> train / id_val, TestImages ->
id_test, no OOD); Table 1 of Li et al. (2020): 5,360 training, 1,340 test images.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest
from pipeline.data.sources.official_split import Context, official_split, read_lines, rows

SOURCE = "mit_indoor67"
FOLDER = "mit_indoor67"
LAYOUT = """
<root>/mit_indoor67/
    Images/<class>/<file>.jpg      e.g. Images/kitchen/int474.jpg (indoorCVPR_09.tar)
    TrainImages.txt                one <class>/<file> per line: the official 5,360 training images
    TestImages.txt                 the official 1,340 test images
"""
ORIGIN = ("MIT Indoor-67 (Quattoni and Torralba 2009), http://web.mit.edu/torralba/www/indoor.html: unpack "
          "indoorCVPR_09.tar into <root>/mit_indoor67/ and save TrainImages.txt and TestImages.txt beside Images/")


def manifest(name: str, cfg: dict) -> Manifest:
    """The official split of MIT Indoor-67, every listed image checked before any is decoded."""
    ctx = Context(name, LAYOUT, ORIGIN)
    base = ctx.require(Path(cfg.get("root", DEFAULT_ROOT)) / FOLDER, "MIT Indoor-67 folder not found")
    images = ctx.require(base / "Images", "image folder not found")
    lists = {"train": base / "TrainImages.txt", "id_test": base / "TestImages.txt"}
    for path in lists.values():
        ctx.require(path, "split file not found")
    entries: dict[str, list[tuple[str, str, int]]] = {}
    for split, path in lists.items():
        entries[split] = []
        for lineno, line in read_lines(ctx, path):
            parts = line.replace("\\", "/").split("/")
            if len(parts) != 2 or not all(parts):
                raise ctx.broken(f"{path}:{lineno}", f"malformed line {line!r} (expected <class>/<file>)")
            entries[split].append((parts[0], line.replace("\\", "/"), lineno))
    classes = sorted({c for c, _, _ in entries["train"]})
    unknown = sorted({c for c, _, _ in entries["id_test"]} - set(classes))
    if unknown:
        first = next(n for c, _, n in entries["id_test"] if c == unknown[0])
        raise ctx.broken(f"{lists['id_test']}:{first}", f"class {unknown[0]!r} has no image in {lists['train'].name}")
    index = {c: i for i, c in enumerate(classes)}
    frames = [rows(split, [index[c] for c, _, _ in items], [images / rel for _, rel, _ in items], lists[split],
                   [f"line {n}" for _, _, n in items]) for split, items in entries.items()]
    return official_split(ctx, pd.concat(frames, ignore_index=True), classes, cfg, SOURCE)
