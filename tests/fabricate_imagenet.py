"""Tiny copies of ImageNet and its four variants in their real on-disk layout, and BREEDS class lists.

``fabricate_imagenet(root, wnids, ...)`` writes ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``
and, per requested variant, the variant's folders (ImageNetV2 folders named by class *index*,
ImageNet-R / -A over a subset of the wnids, ImageNet-Sketch under ``imagenet-sketch/sketch/``).
Images are small random JPEGs, wider than tall so the decoder's center crop is exercised.
``write_breeds_list`` writes a custom class list where the BREEDS source looks first.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]   # the first four ImageNet classes
R_WNIDS = [WNIDS[1], WNIDS[3]]     # ImageNet-R covers classes 1 and 3 of the tiny copy
A_WNIDS = [WNIDS[0], WNIDS[2]]     # ImageNet-A covers classes 0 and 2
COUNTS = {"train": 10, "val": 3, "imagenet_v2": 2, "imagenet_r": 2, "imagenet_sketch": 1, "imagenet_a": 2}


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _class_folder(folder: Path, n: int, stem: str, suffix: str, seed: int) -> None:
    for i in range(n):
        write_jpeg(folder / f"{stem}_{i:04d}{suffix}", seed * 100 + i)


def fabricate_imagenet(root: Path, wnids: list[str] = WNIDS, variants: tuple[str, ...] = tuple(COUNTS)[2:],
                       names: bool = False) -> Path:
    """Write the tiny copy under ``root`` (returned); ``names`` adds ``imagenet/LOC_synset_mapping.txt``."""
    for c, wnid in enumerate(wnids):
        _class_folder(root / "imagenet/train" / wnid, COUNTS["train"], wnid, ".JPEG", c)
        _class_folder(root / "imagenet/val" / wnid, COUNTS["val"], "ILSVRC2012_val", ".JPEG", 1000 + c)
    if names:
        (root / "imagenet/LOC_synset_mapping.txt").write_text(
            "".join(f"{w} class {c}, synonym {c}\n" for c, w in enumerate(wnids)))
    if "imagenet_v2" in variants:
        for c in range(len(wnids)):
            _class_folder(root / "imagenetv2-matched-frequency-format-val" / str(c), COUNTS["imagenet_v2"],
                          f"v2{c}", ".jpeg", 2000 + c)
    for k, (variant, folder, subset, suffix) in enumerate((("imagenet_r", "imagenet-r", R_WNIDS, ".jpg"),
                                                          ("imagenet_sketch", "imagenet-sketch/sketch", wnids, ".JPEG"),
                                                          ("imagenet_a", "imagenet-a", A_WNIDS, ".jpg"))):
        if variant in variants:
            for c, wnid in enumerate(subset):
                _class_folder(root / folder / wnid, COUNTS[variant], variant, suffix, 3000 + 100 * k + c)
    if "imagenet_a" in variants:
        (root / "imagenet-a/README.txt").write_text("a file beside the class folders, as in the real archive\n")
    return root


def write_breeds_list(root: Path, task: str, superclasses: list[dict]) -> Path:
    """``<root>/breeds/<task>.json``: ``[{"name", "source": [wnids], "target": [wnids]}]``."""
    path = root / "breeds" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": task, "superclasses": superclasses}, indent=1))
    return path


def break_imagenet_folders(raw: Path, case: str, val_wnid: str) -> Path | None:
    """Break the ImageNet train/val folders of a fabricated copy as ``case`` says; returns the path the
    error must name, or None for a case this function does not know."""
    import shutil

    if case == "no_root":
        shutil.rmtree(raw)
        return raw / "imagenet" / "train"
    if case == "no_val":
        shutil.rmtree(raw / "imagenet/val")
        return raw / "imagenet" / "val"
    if case == "val_lacks_class":
        shutil.rmtree(raw / "imagenet/val" / val_wnid)
        return raw / "imagenet" / "val" / val_wnid
    return None
