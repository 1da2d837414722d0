"""BREEDS Living-17 and Entity-30 (Santurkar et al., ICLR 2021): ImageNet superclasses, source -> target subclasses.

Each superclass groups ImageNet classes (subclasses, wnids) split into *source* subclasses
(train and ID test) and disjoint *target* subclasses (OOD): the model must recognise a
superclass from subpopulations it never saw. Labels are superclass indices.

Class lists: ``pipeline/data/breeds/{living17,entity30}.json``, shipped with the repository:
the lists of the ``robustness`` library's ``make_living17`` / ``make_entity30`` with
``split="rand"`` (the ones published with BREEDS and used by LP-FT; how they were produced is
in each file's ``provenance``). Living-17 is 17 superclasses x (2 source + 2 target)
subclasses, Entity-30 is 30 x (4 + 4); the shipped lists are checked for that shape. A file
``<root>/breeds/<living17|entity30>.json`` with the same schema takes precedence (any shape:
a custom or smaller task, as the tests use)::

    {"name": "living17", "superclasses": [
        {"name": "salamander", "wnid": "n01629276", "source": ["n01631663", ...], "target": [...]}, ...]}

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`, the ImageNet folders of
:mod:`pipeline.data.sources.imagenet`; only the listed subclasses are read, and each must
have both a train and a val folder.

Splits (``domain``: ``source`` / ``target``; ``group``: the subclass wnid):

* ``train`` / ``id_val``: the source subclasses' ImageNet train images, with a seeded
  ``id_val_fraction`` of each subclass held out as ``id_val``;
* ``id_test``: the source subclasses' ImageNet val images;
* ``ood_val``: a seeded ``ood_val_fraction`` of each target subclass's ImageNet train images
  (the rest of them is not used);
* ``ood_test``: the target subclasses' ImageNet val images (as in BREEDS and LP-FT).

Defaults and why: ``id_val_fraction: 0.1`` (BREEDS has no validation split; a tenth of the
source train images, as the other sources without one hold out: ~4,400 images for Living-17,
~15,600 for Entity-30); ``ood_val_fraction: 0.1`` (it only feeds the OOD-val oracle; a
stratified tenth of the target train images is plenty); ``seed: 0``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest, MissingDataError, holdout
from pipeline.data.sources.imagenet import IMAGENET_LAYOUT, IMAGENET_ORIGIN, folder_rows, imagenet_folders

SHIPPED = Path(__file__).resolve().parent.parent / "breeds"
SHAPES = {"living17": (17, 2), "entity30": (30, 4)}   # superclasses, subclasses per domain
DEFAULTS = {"id_val_fraction": 0.1, "ood_val_fraction": 0.1, "seed": 0}
LAYOUT = IMAGENET_LAYOUT + """<root>/breeds/<living17|entity30>.json
                             optional: replaces the class list shipped in pipeline/data/breeds/
"""
ORIGIN = (IMAGENET_ORIGIN + "; BREEDS class lists (Santurkar et al. 2021, "
          "https://github.com/MadryLab/BREEDS-Benchmarks) ship in pipeline/data/breeds/")
REGENERATE = """python - <<'EOF'
import json, os
from robustness.tools.breeds_helpers import ClassHierarchy, make_{task}, setup_breeds
info_dir = "breeds_info"
if not os.path.isdir(info_dir):
    setup_breeds(info_dir)                     # downloads the BREEDS class hierarchy
wnid = {{num: w for w, num in ClassHierarchy(info_dir).LEAF_ID_TO_NUM.items()}}
superclasses, (source, target), names = make_{task}(info_dir, split="rand")
os.makedirs("{out}", exist_ok=True)
json.dump({{"name": "{task}", "superclasses": [
    {{"name": names[i], "wnid": superclasses[i],
     "source": [wnid[c] for c in source[i]], "target": [wnid[c] for c in target[i]]}}
    for i in range(len(superclasses))]}}, open("{out}/{task}.json", "w"), indent=1)
EOF"""


def manifest(name: str, cfg: dict) -> Manifest:
    """Source/target splits of one BREEDS task, its class list and ImageNet folders checked first."""
    cfg = {**DEFAULTS, **cfg}
    task = str(cfg["source"])
    root = Path(cfg.get("root", DEFAULT_ROOT))
    superclasses = class_list(name, task, root)
    train, val = imagenet_folders(name, root, LAYOUT, ORIGIN)
    for sc in superclasses:
        for wnid in sc["source"] + sc["target"]:
            for part, folders in (("train", train), ("val", val)):
                if wnid not in folders:
                    raise MissingDataError(name, root / "imagenet" / part / wnid, LAYOUT, ORIGIN,
                                           f"ImageNet {part} lacks subclass {wnid} of superclass {sc['name']!r}")

    def rows(domain: str, folders: dict[str, Path], split: str) -> pd.DataFrame:
        return folder_rows(((folders[w], label, domain, w) for label, sc in enumerate(superclasses)
                            for w in sorted(sc[domain])), split)

    seed = int(cfg["seed"])
    target_train = holdout(rows("target", train, "unused"), float(cfg["ood_val_fraction"]), seed,
                           into="ood_val", by="group")
    frames = [holdout(rows("source", train, "train"), float(cfg["id_val_fraction"]), seed, into="id_val", by="group"),
              rows("source", val, "id_test"),
              target_train[target_train["split"] == "ood_val"],
              rows("target", val, "ood_test")]
    return Manifest(records=pd.concat(frames, ignore_index=True), classes=[sc["name"] for sc in superclasses])


def class_list(name: str, task: str, root: Path) -> list[dict]:
    """The task's superclasses: ``<root>/breeds/<task>.json`` if present, else the shipped list (shape-checked)."""
    override, shipped = root / "breeds" / f"{task}.json", SHIPPED / f"{task}.json"
    path = override if override.is_file() else shipped
    if not path.is_file():
        raise MissingDataError(name, shipped, LAYOUT, ORIGIN,
                               f"BREEDS class list for {task} not found (nor {override}); generate it with the "
                               "robustness library (pip install robustness):\n"
                               + REGENERATE.format(task=task, out=override.parent))
    try:
        superclasses = json.loads(path.read_text())["superclasses"]
        lists = [(str(sc["name"]), list(sc["source"]), list(sc["target"])) for sc in superclasses]
    except (ValueError, KeyError, TypeError) as e:
        raise MissingDataError(name, path, LAYOUT, ORIGIN, f"unreadable BREEDS class list ({type(e).__name__}: {e})"
                               ) from None
    wnids = [w for _, src, tgt in lists for w in src + tgt]
    problem = ("no superclasses" if not lists else
               "a superclass without source or target subclasses" if any(not s or not t for _, s, t in lists) else
               "a subclass listed twice" if len(set(wnids)) != len(wnids) else "")
    if not problem and path == shipped:
        n, k = SHAPES[task]
        if len(lists) != n or any(len(s) != k or len(t) != k for _, s, t in lists):
            problem = f"not {n} superclasses x ({k} source + {k} target) subclasses"
    if problem:
        raise MissingDataError(name, path, LAYOUT, ORIGIN, f"invalid BREEDS class list: {problem}")
    return [{"name": label, "source": s, "target": t} for label, s, t in lists]
