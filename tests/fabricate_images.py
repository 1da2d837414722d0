"""Tiny copies of DomainNet, CIFAR-10, STL-10 and CIFAR-10.1 in their real on-disk layouts.

The sources must read the files the user downloads, so these write the same formats
(split lists, pickled or binary CIFAR batches, column-major STL arrays, ``.npy``),
only with a handful of images. Pixel values encode where they came from, so a test
can check that an image reached the right row in the right orientation:
CIFAR/STL/CIFAR-10.1 images have red = 20 * CIFAR label + domain offset, green growing
down the rows and blue growing along the columns.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# Official DomainNet labels of three classes: their label order is not Python's sorted order.
DOMAINNET_CLASSES = {"aircraft_carrier": 0, "tent": 307, "The_Eiffel_Tower": 308}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
RED_OFFSET = {"cifar10": 0, "stl10": 5, "cifar10_1": 10}


def fabricate_domainnet(root: Path, domains: tuple[str, ...] = ("sketch", "real"), train_per_class: int = 4,
                        test_per_class: int = 2) -> Path:
    """``root/domainnet/<domain>/<class>/*.jpg`` and the official ``<domain>_{train,test}.txt`` lists."""
    base = root / "domainnet"
    rng = np.random.default_rng(0)
    for d, domain in enumerate(domains):
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for c, (cls, label) in enumerate(DOMAINNET_CLASSES.items()):
            folder = base / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(train_per_class + test_per_class):
                rel = f"{domain}/{cls}/{domain}_{label:03d}_{n + 1:06d}.jpg"
                pixels = rng.integers(0, 60, size=(24, 30, 3)) + np.array([80 * c, 40 * d, 100])
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(base / rel, quality=95)
                lines["train" if n < train_per_class else "test"].append(f"{rel} {label}")
        for part, rows in lines.items():
            (base / f"{domain}_{part}.txt").write_text("\n".join(rows) + "\n")
    return base


def _pattern(size: int, red: int) -> np.ndarray:
    """uint8 [size, size, 3]: constant red, green = 8 * row, blue = 8 * column (scaled to 32 px)."""
    ramp = (np.arange(size) * 8 * 32 // size).astype(np.uint8)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[..., 0] = red
    img[..., 1] = ramp[:, None]
    img[..., 2] = ramp[None, :]
    return img


def cifar_images(labels: list[int], domain: str = "cifar10", size: int = 32) -> np.ndarray:
    """uint8 [N, size, size, 3] images whose red channel encodes the CIFAR label (255: none) and domain."""
    return np.stack([_pattern(size, 20 * y + RED_OFFSET[domain] if y >= 0 else 255) for y in labels])


def cifar_batch_labels(batch: int) -> list[int]:
    """Labels of training batch ``batch`` (1..5): one image per class, in a batch-dependent order."""
    return [(k * 3 + batch) % 10 for k in range(10)]


CIFAR_TEST_LABELS = [k % 10 for k in range(20)]


def fabricate_cifar10(root: Path, version: str = "bin") -> Path:
    """CIFAR-10 ``cifar-10-batches-bin`` (records of label byte + CHW pixels) or ``-py`` (pickled dicts)."""
    folder = root / ("cifar-10-batches-bin" if version == "bin" else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{b}": cifar_batch_labels(b) for b in range(1, 6)}
    batches["test_batch"] = CIFAR_TEST_LABELS
    for batch, labels in batches.items():
        chw = cifar_images(labels).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        if version == "bin":
            records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], chw], axis=1)
            (folder / f"{batch}.bin").write_bytes(records.tobytes())
        else:
            content = {b"batch_label": batch.encode(), b"labels": labels, b"data": chw,
                       b"filenames": [f"{batch}_{i}.png".encode() for i in range(len(labels))]}
            (folder / batch).write_bytes(pickle.dumps(content, protocol=2))
    if version == "bin":
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    else:
        meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": 10, b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


STL_TRAIN_LABELS = list(range(1, 11))            # 1-based STL labels, one per class (monkey = 8)
STL_TEST_LABELS = [k % 10 + 1 for k in range(20)]


def fabricate_stl10(root: Path) -> Path:
    """``stl10_binary/`` with X as uint8 [N, 3, 96, 96] stored column-major and 1-based y."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    stl_to_cifar = [CIFAR_CLASSES.index({"car": "automobile"}.get(n, n)) if n != "monkey" else -1
                    for n in STL_CLASSES]
    for part, labels in (("train", STL_TRAIN_LABELS), ("test", STL_TEST_LABELS)):
        images = cifar_images([stl_to_cifar[y - 1] for y in labels], "stl10", size=96)
        (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        (folder / f"{part}_y.bin").write_bytes(np.array(labels, dtype=np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL_CLASSES) + "\n")
    return folder


CIFAR10_1_LABELS = [k % 10 for k in range(20)]


def fabricate_cifar10_1(root: Path) -> Path:
    """``cifar10.1/cifar10.1_v6_{data,labels}.npy`` as in github.com/modestyachts/CIFAR-10.1 ``datasets/``."""
    folder = root / "cifar10.1"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "cifar10.1_v6_data.npy", cifar_images(CIFAR10_1_LABELS, "cifar10_1"))
    np.save(folder / "cifar10.1_v6_labels.npy", np.array(CIFAR10_1_LABELS, dtype=np.int64))
    return folder


def fabricate_cifar_task(root: Path, version: str = "bin") -> Path:
    """CIFAR-10 plus both OOD sets under ``root``."""
    fabricate_cifar10(root, version)
    fabricate_stl10(root)
    fabricate_cifar10_1(root)
    return root
