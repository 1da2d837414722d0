"""The four WILDS image datasets, read through the ``wilds`` package's own classes.

Each dataset is loaded with ``wilds.get_dataset`` (so its splits, labels and
metadata are exactly WILDS'), then listed image by image for decoding. The
metadata CSVs the WILDS class reads at construction are copied into the prepared
directory (``files/wilds/<name>_v<version>/``): those constructors read only CSVs,
so evaluation rebuilds the real dataset object without the images and scores
predictions with its official ``eval`` (:mod:`pipeline.evaluation.wilds_eval`).

Split mapping (WILDS -> ours), domain and group per dataset:

* ``waterbirds`` v1.0: train -> train, val -> id_val, test -> id_test, and
  ``ood_test`` is an alias of ``id_test`` (its OOD score is worst-group accuracy
  on test). domain = group = ``<bird>_<place>``, e.g. ``waterbird_land``.
* ``camelyon17`` v1.0: train, id_val, val (hospital 1) -> ood_val, test
  (hospital 2) -> ood_test. WILDS has no ID test split; ``id_test`` is an alias of
  ``id_val``, which is the ID number WILDS and the freeze-embed paper report.
  domain = ``hospital_<k>``, group = ``slide_<k>`` (the slide is WILDS' eval group).
* ``fmow`` v1.1: train, id_val, id_test, val -> ood_val, test -> ood_test.
  domain = region name, group = year (the two axes of its worst-group metrics).
* ``iwildcam`` v2.0: train, id_val, id_test, val -> ood_val, test -> ood_test.
  domain = ``iwildcam`` (hundreds of camera locations are too many to report
  one by one), group = ``location_<k>``; classes are WILDS' label ids.

Optional keys: ``root`` (default ``data/raw``, holding ``<name>_v<version>/``) and how images are
stored (``storage_size``, ``encoding``, ``jpeg_quality``). Preparation never downloads: the ``download`` stage
(:mod:`pipeline.download`) puts the archive in place first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import SPLITS, Manifest, MissingDataError, require

ORIGIN = ("WILDS (Koh et al., ICML 2021), https://wilds.stanford.edu/datasets: run `python -m pipeline fetch "
          "--params <file>` where there is network (the download stage fetches it into root unless the dataset says "
          "`download: false`), or download the archive from https://wilds.stanford.edu/downloads and extract it "
          "under root")
WATERBIRDS = (["landbird", "waterbird"], ["land", "water"])
CAMELYON_CLASSES = ["normal", "tumor"]


@dataclass(frozen=True)
class WildsSpec:
    """What one WILDS dataset needs on disk and how its splits map onto ours."""

    version: str
    csvs: dict[str, tuple[str, ...]]   # metadata files the WILDS class reads -> columns it needs
    image_dir: str                     # folder of the images, relative to the data dir ("" = anywhere)
    splits: dict[str, str]             # WILDS split -> our split
    aliases: dict[str, str]
    metrics: tuple[str, ...]           # headline keys of the dataset's official eval
    layout: str

    def data_dir(self, root: Path, source: str) -> Path:
        return root / f"{source}_v{self.version}"


SPECS: dict[str, WildsSpec] = {
    "waterbirds": WildsSpec(
        "1.0", {"metadata.csv": ("img_filename", "y", "split", "place")}, "",
        {"train": "train", "val": "id_val", "test": "id_test"}, {"ood_test": "id_test"},
        ("adj_acc_avg", "acc_wg"),
        """<root>/waterbirds_v1.0/
  RELEASE_v1.0.txt
  metadata.csv            img_id,img_filename,y,split,place,place_filename
  001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg   (img_filename)
  ...""",
    ),
    "camelyon17": WildsSpec(
        "1.0", {"metadata.csv": ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")},
        "patches", {"train": "train", "id_val": "id_val", "val": "ood_val", "test": "ood_test"},
        {"id_test": "id_val"}, ("acc_avg",),
        """<root>/camelyon17_v1.0/
  RELEASE_v1.0.txt
  metadata.csv            ,patient,node,x_coord,y_coord,tumor,slide,center,split
  patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png
  ...""",
    ),
    "fmow": WildsSpec(
        "1.1", {"rgb_metadata.csv": ("split", "category", "country_code", "timestamp"),
                "country_code_mapping.csv": ("alpha-3", "region")},
        "images", {"train": "train", "id_val": "id_val", "id_test": "id_test", "val": "ood_val", "test": "ood_test"},
        {}, ("acc_avg", "acc_worst_region", "acc_worst_year"),
        """<root>/fmow_v1.1/
  RELEASE_v1.1.txt
  rgb_metadata.csv        split,category,country_code,timestamp,... (one row per image, 'seq' rows included)
  country_code_mapping.csv  alpha-3,region,...
  images/rgb_img_0.png    (rgb_img_<row of rgb_metadata.csv>.png)
  ...""",
    ),
    "iwildcam": WildsSpec(
        "2.0", {"metadata.csv": ("split", "filename", "y", "location_remapped", "sequence_remapped", "datetime")},
        "train", {"train": "train", "id_val": "id_val", "id_test": "id_test", "val": "ood_val", "test": "ood_test"},
        {}, ("acc_avg", "recall-macro_all", "F1-macro_all"),
        """<root>/iwildcam_v2.0/
  RELEASE_v2.0.txt
  metadata.csv            split,location_remapped,sequence_remapped,y,datetime,filename,...
  train/8b31d3be-21bc-11ea-a13a-137349068a90.jpg   (train/<filename>, every split)
  ...""",
    ),
}


def check_layout(name: str, source: str, root: Path) -> Path:
    """The dataset's data dir, after checking every file and folder its WILDS class needs."""
    spec = SPECS[source]
    data_dir = spec.data_dir(root, source)
    for path in (root, data_dir):
        require(path, name, spec.layout, ORIGIN)
    require(data_dir / f"RELEASE_v{spec.version}.txt", name, spec.layout, ORIGIN,
            "WILDS release marker missing (incomplete or unfinished download?)")
    for csv, columns in spec.csvs.items():
        path = require(data_dir / csv, name, spec.layout, ORIGIN, "WILDS metadata file missing")
        lacking = [c for c in columns if c not in pd.read_csv(path, nrows=0).columns]
        if lacking:
            raise MissingDataError(name, path, spec.layout, ORIGIN, f"metadata lacks columns {lacking}")
    if spec.image_dir:
        require(data_dir / spec.image_dir, name, spec.layout, ORIGIN, "image folder missing")
    return data_dir


def load_dataset(source: str, root: Path):
    """The real WILDS dataset object (torch_scatter replaced by the pure-torch compat patch); never downloads."""
    from pipeline import compat

    compat.apply()
    compat.patch_wilds()
    import wilds

    return wilds.get_dataset(dataset=source, version=SPECS[source].version, root_dir=str(root), download=False)


def _paths(data_dir: Path, names) -> list[str]:
    return [os.path.join(data_dir, n) for n in names]


def _rows(source: str, ds) -> tuple[pd.DataFrame, list[str]]:
    """label, domain, group and image path of every image of ``ds`` (WILDS index order), and the classes."""
    y = ds.y_array.numpy().astype(np.int64)
    meta = ds.metadata_array.numpy()
    data_dir = Path(ds.data_dir)
    if source == "waterbirds":
        birds, places = WATERBIRDS
        names = np.array([f"{b}_{p}" for b in birds for p in places])
        domain = group = names[y * 2 + meta[:, 0]]
        paths, classes = _paths(data_dir, ds._input_array), birds
    elif source == "camelyon17":
        domain = np.char.add("hospital_", meta[:, 0].astype(str))
        group = np.char.add("slide_", meta[:, 1].astype(str))
        paths, classes = _paths(data_dir, ds._input_array), CAMELYON_CLASSES
    elif source == "fmow":
        from wilds.datasets.fmow_dataset import categories

        domain = np.asarray(ds.metadata_map["region"], dtype=object)[meta[:, 0]]
        group = (meta[:, 1] + 2002).astype(str)
        paths = _paths(data_dir / "images", (f"rgb_img_{i}.png" for i in ds.full_idxs))
        classes = list(categories)
    else:
        domain = np.full(len(y), "iwildcam")
        group = np.char.add("location_", meta[:, 0].astype(str))
        paths, classes = _paths(data_dir / "train", ds._input_array), [str(i) for i in range(ds.n_classes)]
    frame = pd.DataFrame({"label": y, "domain": domain.astype(str), "group": group.astype(str), "source": paths})
    return frame, classes


def manifest(name: str, cfg: dict) -> Manifest:
    """Every image of the WILDS dataset ``cfg["source"]`` in our splits, plus what official eval needs."""
    source = cfg["source"]
    spec = SPECS[source]
    root = Path(cfg.get("root", DEFAULT_ROOT))
    data_dir = check_layout(name, source, root)  # before wilds, which would create root and raise less clearly
    ds = load_dataset(source, root)
    frame, classes = _rows(source, ds)
    split_array = np.asarray(ds.split_array)
    parts = []
    ours_to_wilds = {ours: w for w, ours in spec.splits.items()}
    for ours in SPLITS:
        if ours in ours_to_wilds:
            idx = np.flatnonzero(split_array == ds.split_dict[ours_to_wilds[ours]])
            parts.append(frame.iloc[idx].assign(split=ours, wilds_index=idx))
    records = pd.concat(parts, ignore_index=True)
    present = set(records["split"]) | set(spec.aliases)
    dest = f"wilds/{data_dir.name}"
    files = {f"{dest}/{f}": data_dir / f for f in [f"RELEASE_v{spec.version}.txt", *spec.csvs]}
    info = {"official_eval": {"kind": "wilds", "dataset": source, "metrics": list(spec.metrics),
                              "splits": [s for s in SPLITS if s != "train" and s in present]}}
    return Manifest(records=records, classes=classes, aliases=dict(spec.aliases), info=info, files=files)
