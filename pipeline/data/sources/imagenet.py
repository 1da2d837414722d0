"""ImageNet (ILSVRC-2012) -> ImageNetV2, ImageNet-R, ImageNet-Sketch, ImageNet-A, read from class folders.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, the layouts the archives unpack
to and that WiSE-FT / Model Soups / timm read with ``ImageFolder``: ImageNet ``train/`` and the
*sorted* ``val/`` (one folder per wnid, as torchvision's ``ImageNet`` or the usual
``valprep.sh`` leave it); ImageNetV2 ``imagenetv2-matched-frequency-format-val/<class index>/``
(folders are class *indices* 0..999, not wnids: read as integers, as the ``imagenetv2_pytorch``
loader does, never sorted as strings); ImageNet-R ``imagenet-r/<wnid>/``; ImageNet-Sketch
``ImageNet-Sketch.zip`` unpacked into ``imagenet-sketch/`` (it holds ``sketch/<wnid>/``, the
folder WiSE-FT calls ``<data>/sketch``); ImageNet-A ``imagenet-a/<wnid>/``.

Classes: the wnid folders of ``imagenet/train/`` in sorted order (label = index: the standard
ImageNet-1k indices when all 1000 are present; a smaller copy works too). Class names are the
wnids, or the names in ``imagenet/LOC_synset_mapping.txt`` (``<wnid> <names>`` per line, as in
the Kaggle release) when that optional file exists.

Splits (``domain`` and ``group`` columns: ``imagenet`` or the variant's key):

* ``train`` / ``id_val``: ImageNet train, with a seeded, per-class stratified ``id_val_fraction``
  held out as ``id_val`` (ImageNet's val set is the ID test set, as in WiSE-FT and Model Soups);
* ``id_test``: ImageNet val (50,000 images);
* ``ood_test``: every requested variant; no ``ood_val`` (the variants are test sets only).

ImageNet-R and -A cover 200 classes each: their class subset (the wnid folders present, which
is the official 200-class list) goes to ``info["class_subsets"]``, so evaluation scores the
argmax over those 200 logits, as their papers do. Every variant wnid must be an ImageNet
class (a train folder), or preparation stops naming it.

``id_val_held_out: false`` trains on all of ImageNet train, as WiSE-FT does
(``mlfoundations/wise-ft@58b7a4b:src/datasets/imagenet.py:24-37``): ``train`` keeps every image and
``id_val`` is the same seeded sample, copied, so it only monitors training (``info.json``:
``"id_val_held_out": false``). Nothing may then be chosen on it: ``python -m pipeline validate``
refuses grids, best-epoch checkpoints, WiSE-FT's alpha on ID val, soups and a swept linear probe
on such a dataset (pipeline/config/load.py).

Defaults and why: ``ood``: all four variants (the WiSE-FT / Model Soups / LP-FT ImageNet suite,
without ObjectNet); ``id_val_fraction: 0.02``: the held-out "ImageNet2p" of Model Soups
(Wortsman et al. 2022), about 25,600 images, plenty for model selection while train keeps 98%;
``id_val_held_out: true``; ``seed: 0``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import (
    RECORD_COLUMNS,
    Manifest,
    MissingDataError,
    chosen_subset,
    holdout,
    list_images,
    require,
)

VARIANTS = {"imagenet_v2": "imagenetv2-matched-frequency-format-val", "imagenet_r": "imagenet-r",
            "imagenet_sketch": "imagenet-sketch/sketch", "imagenet_a": "imagenet-a"}
SUBSET_VARIANTS = ("imagenet_r", "imagenet_a")   # 200-class sets, scored over their own classes
DEFAULTS = {"ood": list(VARIANTS), "id_val_fraction": 0.02, "id_val_held_out": True, "seed": 0}
ID_DOMAIN = "imagenet"
IMAGENET_LAYOUT = """
<root>/imagenet/
    train/<wnid>/*.JPEG          ILSVRC-2012 train, one folder per class (n01440764, ...)
    val/<wnid>/*.JPEG            ILSVRC-2012 val sorted into the same class folders
    LOC_synset_mapping.txt       optional: "<wnid> <class names>" per line
"""
LAYOUT = IMAGENET_LAYOUT + """<root>/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg
                                 ood: imagenet_v2 (folder = ImageNet class index)
<root>/imagenet-r/<wnid>/*.jpg   ood: imagenet_r (200 classes)
<root>/imagenet-sketch/sketch/<wnid>/*.JPEG
                                 ood: imagenet_sketch (ImageNet-Sketch.zip unpacked into imagenet-sketch/)
<root>/imagenet-a/<wnid>/*.jpg   ood: imagenet_a (200 classes)
"""
IMAGENET_ORIGIN = ("ImageNet ILSVRC-2012 (Russakovsky et al. 2015), https://image-net.org/download.php "
                   "(train and val archives; sort val into class folders, e.g. with torchvision.datasets.ImageNet "
                   "or the Kaggle LOC_val_solution.csv)")
ORIGIN = (IMAGENET_ORIGIN + "; ImageNetV2 matched-frequency (Recht et al. 2019), "
          "https://github.com/modestyachts/ImageNetV2 (imagenetv2-matched-frequency.tar.gz); ImageNet-R (Hendrycks "
          "et al. 2021), https://github.com/hendrycks/imagenet-r (imagenet-r.tar); ImageNet-Sketch (Wang et al. "
          "2019), https://github.com/HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip); ImageNet-A (Hendrycks et al. "
          "2021), https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar); unpack each under <root>/")


def manifest(name: str, cfg: dict) -> Manifest:
    """ImageNet ID splits and the requested variants, every folder checked before any image is listed."""
    cfg = {**DEFAULTS, **cfg}
    ood = chosen_subset(name, "ood", cfg["ood"], VARIANTS)
    root = Path(cfg.get("root", DEFAULT_ROOT))
    train, val = imagenet_folders(name, root, LAYOUT, ORIGIN)
    wnids = sorted(train)
    for part, have, other in (("val", val, train), ("train", train, val)):
        lacking = sorted(set(other) - set(have))
        if lacking:
            raise MissingDataError(name, root / "imagenet" / part / lacking[0], LAYOUT, ORIGIN,
                                   f"ImageNet {part} lacks {len(lacking)} class folder(s) that the other split has")
    index = {w: i for i, w in enumerate(wnids)}
    variants = {v: _variant_folders(name, root, v, index) for v in ood}

    id_rows = folder_rows(((train[w], index[w], ID_DOMAIN, ID_DOMAIN) for w in wnids), "train")
    held_out = bool(cfg["id_val_held_out"])
    frames = [holdout(id_rows, float(cfg["id_val_fraction"]), int(cfg["seed"]), into="id_val", keep=not held_out),
              folder_rows(((val[w], index[w], ID_DOMAIN, ID_DOMAIN) for w in wnids), "id_test")]
    frames += [folder_rows(((folder, label, v, v) for label, folder in variants[v].items()), "ood_test")
               for v in ood]
    subsets = {v: sorted(variants[v]) for v in ood if v in SUBSET_VARIANTS}
    info = {"class_subsets": subsets} if subsets else {}
    if not held_out:
        info["id_val_held_out"] = False
    return Manifest(records=pd.concat(frames, ignore_index=True), classes=class_names(root, wnids), info=info)


def imagenet_folders(name: str, root: Path, layout: str, origin: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({wnid: train folder}, {wnid: val folder})`` of ``<root>/imagenet``; both must exist and be non-empty."""
    folders = []
    for part in ("train", "val"):
        path = require(root / "imagenet" / part, name, layout, origin, f"ImageNet {part} folder not found")
        classes = class_folders(path)
        if not classes:
            raise MissingDataError(name, path / "<wnid>", layout, origin, f"ImageNet {part} has no class folders")
        folders.append(classes)
    return folders[0], folders[1]


def class_folders(folder: Path) -> dict[str, Path]:
    """``{folder name: path}`` of the sub-folders of ``folder`` (hidden ones skipped), sorted by name."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def folder_rows(folders: Iterable[tuple[Path, int, str, str]], split: str) -> pd.DataFrame:
    """One record per image of each ``(folder, label, domain, group)``, in folder then file-name order."""
    parts = [pd.DataFrame({"split": split, "label": label, "domain": domain, "group": group,
                           "source": [str(p) for p in list_images(folder)]})
             for folder, label, domain, group in folders]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RECORD_COLUMNS)


def class_names(root: Path, wnids: list[str]) -> list[str]:
    """Human names from ``imagenet/LOC_synset_mapping.txt`` when present, else the wnids themselves."""
    mapping = root / "imagenet" / "LOC_synset_mapping.txt"
    if not mapping.is_file():
        return list(wnids)
    names = dict(line.strip().split(" ", 1) for line in mapping.read_text().splitlines() if " " in line.strip())
    return [names.get(w, w) for w in wnids]


def _variant_folders(name: str, root: Path, variant: str, index: dict[str, int]) -> dict[int, Path]:
    """``{ImageNet label: class folder}`` of one variant, every folder mapped to an ImageNet class."""
    path = require(root / VARIANTS[variant], name, LAYOUT, ORIGIN, f"{variant} folder not found")
    folders = class_folders(path)
    if not folders:
        raise MissingDataError(name, path / "<class>", LAYOUT, ORIGIN, f"{variant} has no class folders")
    out: dict[int, Path] = {}
    for key, folder in folders.items():
        if variant == "imagenet_v2":
            if not key.isdigit() or int(key) >= len(index):
                raise MissingDataError(name, folder, LAYOUT, ORIGIN, f"imagenet_v2 folder {key!r} is not an "
                                       f"ImageNet class index (imagenet/train/ has {len(index)} class folders)")
            out[int(key)] = folder
        elif key in index:
            out[index[key]] = folder
        else:
            raise MissingDataError(name, root / "imagenet" / "train" / key, LAYOUT, ORIGIN,
                                   f"{variant} class {key} ({folder}) is not an ImageNet class: no train folder")
    return dict(sorted(out.items()))
