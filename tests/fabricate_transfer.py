"""Tiny copies of the seven transfer targets of Li et al. (2020), in their real on-disk layouts.

Stanford Dogs, Caltech-256, MIT Indoor-67, CUB-200-2011, Stanford Cars, FGVC-Aircraft and Oxford
Flowers-102, each with 3 classes and a handful of images, written in the formats the user downloads:
MATLAB ``.mat`` files through ``scipy.io.savemat`` (cell arrays, numeric vectors, struct arrays),
text lists as the archives ship them. Each image is one flat colour whose red channel encodes its
class: red = :func:`red` (label), so a test can tell that every row holds the image its label says.
Every ``fabricate_*`` returns the root it wrote under.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

SIZE = (20, 14)   # width, height: not square, so the center crop is exercised


def red(label: int) -> int:
    return 30 + 40 * label


def image(path: Path, label: int, fmt: str = "JPEG") -> None:
    """A flat image whose red channel encodes ``label`` (JPEG at high quality: the value survives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = red(label), 90, 160
    img = Image.fromarray(pixels)
    if fmt == "GIF":
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="GIF")
    else:
        img.save(path, format=fmt, **({"quality": 98} if fmt == "JPEG" else {}))


def _cell(strings: list[str]) -> np.ndarray:
    """A MATLAB N x 1 cell array of strings, as savemat writes an object array."""
    cell = np.empty((len(strings), 1), dtype=object)
    cell[:, 0] = strings
    return cell


# --- Stanford Dogs ------------------------------------------------------------------------------------------
DOGS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
DOGS_COUNTS = {"train": 4, "test": 2}   # per class


def fabricate_stanford_dogs(root: Path) -> Path:
    base = root / "stanford_dogs"
    lists = {"train": [], "test": []}
    n = 0
    for label, folder in enumerate(DOGS):
        wnid = folder.split("-")[0]
        for part, count in DOGS_COUNTS.items():
            for _ in range(count):
                n += 1
                rel = f"{folder}/{wnid}_{1000 + n}.jpg"
                image(base / "Images" / rel, label)
                lists[part].append((rel, label + 1))
    (base / "lists").mkdir(parents=True)
    for part, entries in lists.items():
        entries = entries[::-1] if part == "test" else entries   # list order is not folder order
        savemat(base / "lists" / f"{part}_list.mat",
                {"file_list": _cell([r for r, _ in entries]),
                 "annotation_list": _cell([r[:-4] for r, _ in entries]),
                 "labels": np.array([[y] for _, y in entries], dtype=np.float64)})
    return root


# --- Caltech-256 --------------------------------------------------------------------------------------------
CALTECH = ["001.ak47", "002.american-flag", "003.backpack"]
CALTECH_PER_CLASS = 7


def fabricate_caltech256(root: Path, per_class: int = CALTECH_PER_CLASS, clutter: int = 5) -> Path:
    """Class folders 001..003 (+ 257.clutter) of ``NNN_MMMM.jpg``; 002 also holds a stray sub-folder and file."""
    base = root / "caltech256" / "256_ObjectCategories"
    folders = [*CALTECH, "257.clutter"] if clutter else CALTECH
    for label, folder in enumerate(folders):
        number = int(folder[:3])
        for k in range(1, (clutter if folder.endswith("clutter") else per_class) + 1):
            image(base / folder / f"{number:03d}_{k:04d}.jpg", label)
    image(base / "002.american-flag" / "greg" / "002_0001.jpg", 0)   # like 056.dog/greg/: not read
    (base / "002.american-flag" / "RENAME2").write_text("not an image\n")   # like 198.spider/RENAME2
    return root


# --- MIT Indoor-67 ------------------------------------------------------------------------------------------
INDOOR = ["airport_inside", "bar", "kitchen"]
INDOOR_COUNTS = {"Train": 4, "Test": 2}


def fabricate_mit_indoor67(root: Path) -> Path:
    """``Images/<class>/``, TrainImages.txt / TestImages.txt (CRLF lines); one GIF saved under a .jpg name."""
    base = root / "mit_indoor67"
    lines = {"Train": [], "Test": []}
    for label, cls in enumerate(INDOOR):
        k = 0
        for part, count in INDOOR_COUNTS.items():
            for _ in range(count):
                k += 1
                rel = f"{cls}/{cls}_{k:04d}.jpg"
                image(base / "Images" / rel, label, fmt="GIF" if (cls, k) == ("bar", 1) else "JPEG")
                lines[part].append(rel)
    for part, rels in lines.items():
        (base / f"{part}Images.txt").write_bytes(("\r\n".join(rels) + "\r\n").encode())
    return root


# --- CUB-200-2011 -------------------------------------------------------------------------------------------
CUB = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_COUNTS = {1: 4, 0: 2}   # is_training_image -> per class


def fabricate_cub200(root: Path) -> Path:
    base = root / "CUB_200_2011"
    images, labels, split = [], [], []
    n = 0
    for label, cls in enumerate(CUB):
        for is_train, count in CUB_COUNTS.items():
            for _ in range(count):
                n += 1
                rel = f"{cls}/{cls.split('.', 1)[1]}_{n:04d}_{100 + n}.jpg"
                image(base / "images" / rel, label)
                images.append(f"{n} {rel}")
                labels.append(f"{n} {label + 1}")
                split.append(f"{n} {is_train}")
    for name, content in (("images.txt", images), ("image_class_labels.txt", labels),
                          ("train_test_split.txt", split),
                          ("classes.txt", [f"{k + 1} {c}" for k, c in enumerate(CUB)])):
        (base / name).write_text("\n".join(content) + "\n")
    return root


# --- Stanford Cars ------------------------------------------------------------------------------------------
CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
CARS_COUNTS = {"train": 4, "test": 2}


def _annotations(entries: list[tuple[str, int]]) -> np.ndarray:
    """A 1 x N MATLAB struct array as in cars_train_annos.mat: bbox_x1..y2, class, fname."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    out = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(entries):
        out[0, i] = (*[np.array([[v]], dtype=np.uint16) for v in (1, 2, 18, 12)],
                     np.array([[cls]], dtype=np.uint8), np.array([fname]))
    return out


def fabricate_stanford_cars(root: Path, test_labels_in_devkit: bool = False) -> Path:
    base = root / "stanford_cars"
    entries = {"train": [], "test": []}
    for part in entries:
        n = 0
        for label in range(len(CARS)):
            for _ in range(CARS_COUNTS[part]):
                n += 1
                image(base / f"cars_{part}" / f"{n:05d}.jpg", label)
                entries[part].append((f"{n:05d}.jpg", label + 1))
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([CARS], dtype=object)})
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(entries["train"])})
    test = base / ("devkit" if test_labels_in_devkit else "") / "cars_test_annos_withlabels.mat"
    savemat(test, {"annotations": _annotations(entries["test"])})
    return root


# --- FGVC-Aircraft ------------------------------------------------------------------------------------------
AIRCRAFT = ["707-320", "F/A-18", "Falcon 2000"]   # a slash and a space, as in the real variants.txt
AIRCRAFT_COUNTS = {"trainval": 4, "test": 2}


def fabricate_fgvc_aircraft(root: Path) -> Path:
    base = root / "fgvc-aircraft-2013b" / "data"
    lines = {"trainval": [], "test": []}
    n = 0
    for label, variant in enumerate(AIRCRAFT):
        for part, count in AIRCRAFT_COUNTS.items():
            for _ in range(count):
                n += 1
                image_id = f"{1000000 + 37 * n:07d}"
                image(base / "images" / f"{image_id}.jpg", label)
                lines[part].append(f"{image_id} {variant}")
    for part, content in lines.items():
        (base / f"images_variant_{part}.txt").write_text("\n".join(sorted(content)) + "\n")
    (base / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    return root


# --- Oxford Flowers-102 -------------------------------------------------------------------------------------
FLOWERS_CLASSES = 3
FLOWERS_SETS = {"trnid": 2, "valid": 2, "tstid": 2}   # per class


def fabricate_flowers102(root: Path) -> Path:
    """Images numbered 1..N in an interleaved class order; setid lists each set's numbers (uint16, 1 x k)."""
    base = root / "flowers-102"
    per_class = sum(FLOWERS_SETS.values())
    labels = [k % FLOWERS_CLASSES + 1 for k in range(FLOWERS_CLASSES * per_class)]
    for i, y in enumerate(labels, start=1):
        image(base / "jpg" / f"image_{i:05d}.jpg", y - 1)
    sets: dict[str, list[int]] = {k: [] for k in FLOWERS_SETS}
    for cls in range(1, FLOWERS_CLASSES + 1):
        numbers = [i for i, y in enumerate(labels, start=1) if y == cls]
        start = 0
        for key, count in FLOWERS_SETS.items():
            sets[key] += numbers[start:start + count]
            start += count
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([sorted(v)], dtype=np.uint16) for k, v in sets.items()})
    return root
