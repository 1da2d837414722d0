"""Tiny copies of the four WILDS datasets in their real on-disk layout (wilds 2.0.0).

Each fabricator writes ``<root>/<name>_v<version>/`` with the release marker, the
metadata CSV(s) the WILDS class reads and a few dozen 12x12 images, and returns
that data dir. Their contents are chosen so that every split WILDS derives is
non-empty (methods.md section 5) and the tests can check metrics by hand:

* Waterbirds: 2 images per (bird, place) group in each of train/val/test.
* Camelyon17: centers 0-4, one patient (zero-padded id) with two nodes each;
  centers 1 and 2 become WILDS' OOD val and test whatever their ``split``.
* FMoW: rows in all five time-based splits, one sequestered (``seq``) row, one
  train row after 2013 (in no split) and one country outside the mapping (Other).
* iWildCam: contiguous label, location and sequence ids; images at train/<filename>.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 12
FMOW_CATEGORIES = ["airport", "barn", "dam", "zoo"]
FMOW_REGIONS = {"USA": "Americas", "FRA": "Europe", "CHN": "Asia", "NGA": "Africa"}


def write_image(path: Path, seed: int) -> None:
    """A small random RGB image; the format follows the suffix (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _release(root: Path, name: str, version: str) -> Path:
    data_dir = root / f"{name}_v{version}"
    data_dir.mkdir(parents=True)
    (data_dir / f"RELEASE_v{version}.txt").write_text("")
    return data_dir


def waterbirds(root: Path) -> Path:
    """split 0/1/2 x (y, place) in {0,1}^2 x 2 images, in WILDS row order."""
    data_dir = _release(root, "waterbirds", "1.0")
    rows = []
    for split in range(3):
        for y in range(2):
            for place in range(2):
                for _ in range(2):
                    i = len(rows) + 1
                    species = "001.Black_footed_Albatross" if y else "029.American_Crow"
                    rows.append({"img_id": i, "img_filename": f"{species}/{species[4:]}_{i:04d}.jpg", "y": y,
                                 "split": split, "place": place,
                                 "place_filename": f"/{'o/ocean' if place else 'f/forest'}/{i:08d}.jpg"})
    df = pd.DataFrame(rows)
    df.to_csv(data_dir / "metadata.csv", index=False)
    for i, f in enumerate(df["img_filename"]):
        write_image(data_dir / f, i)
    return data_dir


def camelyon17_path(patient: str, node: int, x: int, y: int) -> str:
    return f"patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"


def camelyon17(root: Path) -> Path:
    """Per center: 4 patches (tumor 0,1,0,1; split 0,0,1,1) of patient 0<center*20+4>, nodes 0 and 1."""
    data_dir = _release(root, "camelyon17", "1.0")
    rows = []
    for center in range(5):
        patient = f"{center * 20 + 4:03d}"
        for k in range(4):
            node = k % 2
            rows.append({"patient": patient, "node": node, "x_coord": 3328 + 96 * k, "y_coord": 21792 + 96 * k,
                         "tumor": k % 2, "slide": center * 2 + node, "center": center, "split": k // 2})
    df = pd.DataFrame(rows)
    df.to_csv(data_dir / "metadata.csv")  # the real file has an unnamed index column
    for i, r in df.iterrows():
        write_image(data_dir / camelyon17_path(r["patient"], r["node"], r["x_coord"], r["y_coord"]), int(i))
    return data_dir


# (split, year, country) per FMoW row; category cycles through FMOW_CATEGORIES.
FMOW_ROWS = (
    [("train", 2010 + k % 3, c) for k, c in enumerate(["USA", "FRA", "CHN", "NGA"] * 2)]
    + [("val", 2011, "USA"), ("val", 2012, "FRA"), ("val", 2010, "CHN")]         # id_val
    + [("test", 2012, "USA"), ("test", 2011, "NGA"), ("test", 2009, "FRA")]      # id_test
    + [("seq", 2014, "USA")]                                                      # sequestered: dropped
    + [("val", 2013, "USA"), ("val", 2014, "FRA"), ("val", 2015, "CHN")]         # ood_val
    + [("train", 2014, "USA")]                                                    # train after 2013: no split
    + [("test", 2016, "USA"), ("test", 2016, "USA"), ("test", 2017, "FRA"),      # ood_test
       ("test", 2017, "FRA"), ("test", 2016, "CHN"), ("test", 2017, "XXX")]
)


def fmow(root: Path) -> Path:
    """rgb_metadata.csv (tz-aware timestamps), country_code_mapping.csv, images/rgb_img_<row>.png."""
    data_dir = _release(root, "fmow", "1.1")
    df = pd.DataFrame([{"split": s, "img_filename": f"img_{i}.jpg",
                        "category": FMOW_CATEGORIES[i % len(FMOW_CATEGORIES)], "country_code": c,
                        "timestamp": f"{year}-06-01T00:00:00Z"} for i, (s, year, c) in enumerate(FMOW_ROWS)])
    df.to_csv(data_dir / "rgb_metadata.csv", index=False)
    pd.DataFrame({"name": list(FMOW_REGIONS), "alpha-3": list(FMOW_REGIONS),
                  "region": list(FMOW_REGIONS.values())}).to_csv(data_dir / "country_code_mapping.csv", index=False)
    for i, s in enumerate(df["split"]):
        if s != "seq":
            write_image(data_dir / "images" / f"rgb_img_{i}.png", i)
    return data_dir


# (split, location, label) per iWildCam image; each row is its own sequence.
IWILDCAM_ROWS = (
    [("train", k % 3, k % 4) for k in range(8)]
    + [("id_val", k % 3, k) for k in range(4)]
    + [("id_test", k % 3, k) for k in range(4)]
    + [("val", 3, k) for k in range(4)]
    + [("test", 4 + k % 2, y) for k, y in enumerate([0, 1, 2, 3, 0, 1])]
)


def iwildcam(root: Path) -> Path:
    """metadata.csv with contiguous y/location/sequence ids; every image at train/<filename>."""
    data_dir = _release(root, "iwildcam", "2.0")
    df = pd.DataFrame([{"split": s, "location_remapped": loc, "sequence_remapped": i, "y": y,
                        "datetime": f"2013-06-{1 + i % 28:02d} 10:20:{i % 60:02d}.000",
                        "filename": f"{i:08x}-21bc-11ea-a13a-137349068a90.jpg"}
                       for i, (s, loc, y) in enumerate(IWILDCAM_ROWS)])
    df.to_csv(data_dir / "metadata.csv", index=False)
    for i, f in enumerate(df["filename"]):
        write_image(data_dir / "train" / f, i)
    return data_dir


FABRICATORS = {"waterbirds": waterbirds, "camelyon17": camelyon17, "fmow": fmow, "iwildcam": iwildcam}
