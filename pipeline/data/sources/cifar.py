"""CIFAR-10 -> STL-10 (the 9 shared classes) and CIFAR-10.1, read from the official array files.

Layout (``root`` defaults to ``data/raw``): :data:`LAYOUT`. CIFAR-10 may be either the
binary or the python version; the binary one is used when both are present (plain
records, no unpickling). The python batches are read with :class:`RestrictedUnpickler`,
which only rebuilds numpy arrays, so a tampered file cannot run code.

Splits (``domain`` column: ``cifar10``, ``stl10``, ``cifar10_1``):

* ``train`` / ``id_val``: CIFAR-10 ``data_batch_1..5``, with a seeded, per-class stratified
  ``id_val_fraction`` held out as ``id_val`` (CIFAR-10 has no validation split);
* ``id_test``: CIFAR-10 ``test_batch``;
* ``ood_val``: STL-10 train + a seeded, per-class stratified half of CIFAR-10.1;
* ``ood_test``: STL-10 test + the other half of CIFAR-10.1.

STL-10 keeps the 9 classes it shares with CIFAR-10 (``car`` is CIFAR's ``automobile``;
``monkey`` is dropped), relabelled to CIFAR indices. The model keeps CIFAR's 10 outputs,
as in Kumar et al. (2022): an STL image predicted ``frog`` counts as wrong.

Defaults and why: ``ood: [stl10, cifar10_1]`` (both OOD sets of LP-FT);
``id_val_fraction: 0.1`` (5,000 of the 50,000 train images, the share the other sources
without a validation split hold out); ``seed: 0``. Images are served from the arrays
(memory-mapped where the format allows), keyed ``cifar10:data_batch_1:17``,
``cifar10:test_batch:3``, ``stl10:train:5``, ``cifar10_1:12`` (index within the file).
"""
from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.sources import DEFAULT_ROOT
from pipeline.data.sources.base import Manifest, MissingDataError, chosen_subset, holdout, require

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL_TO_CIFAR_NAME = {"car": "automobile"}   # STL's other shared classes carry CIFAR's names
OOD_SETS = ("stl10", "cifar10_1")
DEFAULTS = {"ood": list(OOD_SETS), "id_val_fraction": 0.1, "seed": 0}
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_BYTES, STL_BYTES = 3 * 32 * 32, 3 * 96 * 96
LAYOUT = """
<root>/
    cifar-10-batches-bin/                binary version (preferred when both exist)
        data_batch_1.bin .. data_batch_5.bin, test_batch.bin, batches.meta.txt
    cifar-10-batches-py/                 or the python version
        data_batch_1 .. data_batch_5, test_batch, batches.meta
    stl10_binary/                        ood: stl10
        train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt
    cifar10.1/                           ood: cifar10_1
        cifar10.1_v6_data.npy, cifar10.1_v6_labels.npy
"""
ORIGIN = ("CIFAR-10 (Krizhevsky 2009), https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-binary.tar.gz or "
          "cifar-10-python.tar.gz); STL-10 (Coates et al. 2011), https://cs.stanford.edu/~acoates/stl10/ "
          "(stl10_binary.tar.gz); CIFAR-10.1 v6 (Recht et al. 2018), https://github.com/modestyachts/CIFAR-10.1 "
          "(datasets/cifar10.1_v6_data.npy and _labels.npy); extract each under <root>/")
Reader = Callable[[int], np.ndarray]   # image index -> uint8 [H, W, 3]


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array needs, under numpy 1 and numpy 2 module names."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): codecs.encode}  # bytes under protocol 2
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct   # protocols 2-4
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer           # protocol 5
    return allowed


ALLOWED_GLOBALS = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global (``os.system``...) is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays "
                                         "are allowed in a CIFAR-10 batch") from None


def manifest(name: str, cfg: dict) -> Manifest:
    """CIFAR-10 ID splits and the chosen OOD sets, their files checked before any is read."""
    cfg = {**DEFAULTS, **cfg}
    ood = chosen_subset(name, "ood", cfg["ood"], OOD_SETS)
    root = Path(cfg.get("root", DEFAULT_ROOT))
    cifar_files = _cifar_files(name, root)
    stl_dir, c101_dir = root / "stl10_binary", root / "cifar10.1"
    needed = {"stl10": [stl_dir / f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin",
                                              "class_names.txt")],
              "cifar10_1": [c101_dir / "cifar10.1_v6_data.npy", c101_dir / "cifar10.1_v6_labels.npy"]}
    for path in [*cifar_files.values()] + [p for o in ood for p in needed[o]]:
        require(path, name, LAYOUT, ORIGIN, "file not found")

    seed, readers, batches = int(cfg["seed"]), {}, {}
    _check_meta(name, cifar_files["meta"])
    for batch in BATCHES:
        labels, readers[f"cifar10:{batch}"] = _cifar_batch(name, cifar_files[batch])
        batches[batch] = _rows("train" if batch != "test_batch" else "id_test", "cifar10", f"cifar10:{batch}",
                               labels, np.arange(len(labels)))
    test = batches.pop("test_batch")
    frames = [holdout(pd.concat(batches.values(), ignore_index=True), float(cfg["id_val_fraction"]), seed,
                      into="id_val"), test]
    if "stl10" in ood:
        to_cifar = _stl_label_map(name, stl_dir / "class_names.txt")
        for part, split in (("train", "ood_val"), ("test", "ood_test")):
            labels, readers[f"stl10:{part}"] = _stl_part(name, stl_dir, part)
            keep = np.flatnonzero(to_cifar[labels] >= 0)
            frames.append(_rows(split, "stl10", f"stl10:{part}", to_cifar[labels[keep]], keep))
    if "cifar10_1" in ood:
        labels, readers["cifar10_1"] = _cifar10_1(name, *needed["cifar10_1"])
        c101 = _rows("ood_test", "cifar10_1", "cifar10_1", labels, np.arange(len(labels)))
        frames.append(holdout(c101, 0.5, seed, into="ood_val"))
    return Manifest(records=pd.concat(frames, ignore_index=True), classes=list(CLASSES),
                    open_image=partial(_open, readers))


def _broken(name: str, path: Path, detail: str) -> MissingDataError:
    return MissingDataError(name, path, LAYOUT, ORIGIN, detail)


def _open(readers: dict[str, Reader], source: str) -> Image.Image:
    """``source`` = ``<array key>:<index>``; read-only array access, safe from many threads."""
    key, _, index = source.rpartition(":")
    return Image.fromarray(readers[key](int(index)))


def _rows(split: str, domain: str, key: str, labels: np.ndarray, index: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"split": split, "label": np.asarray(labels, dtype=np.int64), "domain": domain,
                         "group": domain, "source": [f"{key}:{i}" for i in index]})


def _cifar_files(name: str, root: Path) -> dict[str, Path]:
    """The CIFAR-10 batch and meta files: the binary version when its folder exists, else the python one."""
    binary, python = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    if binary.is_dir():
        return {**{b: binary / f"{b}.bin" for b in BATCHES}, "meta": binary / "batches.meta.txt"}
    if python.is_dir():
        return {**{b: python / b for b in BATCHES}, "meta": python / "batches.meta"}
    raise _broken(name, binary, f"CIFAR-10 not found (neither {binary.name}/ nor {python.name}/ exists)")


def _unpickle(name: str, path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
        except Exception as e:  # a truncated or tampered pickle fails in many ways; all mean "broken"
            raise _broken(name, path, f"unreadable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise _broken(name, path, f"CIFAR-10 python batch holds a {type(obj).__name__}, not a dict")
    return obj


def _check_meta(name: str, path: Path) -> None:
    """The class names, in CIFAR's label order: the STL relabelling relies on it."""
    if path.suffix == ".txt":
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(name, path).get(b"label_names", [])]
    if names != CLASSES:
        raise _broken(name, path, f"CIFAR-10 class names {names} differ from {CLASSES}")


def _cifar_batch(name: str, path: Path) -> tuple[np.ndarray, Reader]:
    """(labels, reader) of one CIFAR-10 batch; binary records are memory-mapped, not loaded."""
    if path.suffix == ".bin":
        size = path.stat().st_size
        if size == 0 or size % (CIFAR_BYTES + 1):
            raise _broken(name, path, f"truncated CIFAR-10 batch: {size} bytes is not a whole number of "
                                      f"{CIFAR_BYTES + 1}-byte records")
        records = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, CIFAR_BYTES + 1)
        labels, chw = np.asarray(records[:, 0], dtype=np.int64), records[:, 1:].reshape(-1, 3, 32, 32)
    else:
        batch = _unpickle(name, path)
        data, labels = batch.get(b"data"), np.asarray(batch.get(b"labels", []), dtype=np.int64)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != CIFAR_BYTES \
                or len(data) != len(labels):
            raise _broken(name, path, f"CIFAR-10 python batch lacks uint8 data [N, {CIFAR_BYTES}] with N labels")
        chw = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
    _check_labels(name, path, labels, 10)
    return labels, partial(_hwc, chw, (1, 2, 0))


def _hwc(array: np.ndarray, axes: tuple[int, int, int], index: int) -> np.ndarray:
    return np.ascontiguousarray(array[index].transpose(axes))


def _check_labels(name: str, path: Path, labels: np.ndarray, num: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num):
        raise _broken(name, path, f"labels outside [0, {num}): [{labels.min()}, {labels.max()}]")


def _stl_label_map(name: str, path: Path) -> np.ndarray:
    """STL label (0-based) -> CIFAR label, -1 for STL's class CIFAR lacks (monkey)."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != 10:
        raise _broken(name, path, f"expected STL-10's 10 class names, found {len(names)}")
    to_cifar = np.array([CLASSES.index(STL_TO_CIFAR_NAME.get(n, n)) if STL_TO_CIFAR_NAME.get(n, n) in CLASSES
                         else -1 for n in names])
    if (to_cifar >= 0).sum() != 9:
        raise _broken(name, path, f"expected 9 STL-10 classes shared with CIFAR-10, found {names}")
    return to_cifar


def _stl_part(name: str, folder: Path, part: str) -> tuple[np.ndarray, Reader]:
    """(0-based labels, reader) of STL-10 train or test; images are stored column-major per channel."""
    x_path, y_path = folder / f"{part}_X.bin", folder / f"{part}_y.bin"
    size = x_path.stat().st_size
    if size == 0 or size % STL_BYTES:
        raise _broken(name, x_path, f"truncated STL-10 images: {size} bytes is not a whole number of "
                                    f"{STL_BYTES}-byte images")
    images = np.memmap(x_path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise _broken(name, y_path, f"{len(labels)} labels for the {len(images)} images of {x_path.name}")
    _check_labels(name, y_path, labels, 10)
    return labels, partial(_hwc, images, (2, 1, 0))


def _cifar10_1(name: str, data_path: Path, labels_path: Path) -> tuple[np.ndarray, Reader]:
    """(labels, reader) of CIFAR-10.1 v6: uint8 [N, 32, 32, 3] and N labels in CIFAR's order."""
    try:
        images = np.load(data_path, mmap_mode="r")
        labels = np.load(labels_path).astype(np.int64)
    except (ValueError, OSError, EOFError) as e:
        raise _broken(name, data_path.parent, f"unreadable CIFAR-10.1 arrays ({e})") from None
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or labels.shape != (len(images),):
        raise _broken(name, data_path, f"CIFAR-10.1 images {images.dtype} {images.shape} and labels "
                                       f"{labels.shape} are not uint8 [N, 32, 32, 3] and [N]")
    _check_labels(name, labels_path, labels, 10)
    return labels, partial(_hwc, images, (0, 1, 2))
