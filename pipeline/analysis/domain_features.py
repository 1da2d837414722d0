"""A domain's class means read straight from a features file, for the domain similarity (:mod:`.similarity`).

The file is the ``features`` stage's (:mod:`pipeline.models.features`): per split ``<split>/features``
(float32 [N, D]) and ``<split>/labels``. A domain is the rows of some splits, by default the file's train
and ID-val splits together (the training set the pretrained model, or the fine-tune, sees; ID val is a
held-out part of it). Rows are streamed in chunks and summed per class in float64, so an ImageNet-scale
file (1.28M x 2048 floats) never has to fit in memory.

``max_per_class`` bounds the images of each class that enter its mean: a class with more keeps
``max_per_class`` of them, drawn uniformly without replacement by ``numpy.random.default_rng([seed,
label])``, one generator per class, so a class's draw depends on nothing but the seed, its label and its
own rows (in file order). The class *weights* stay the class frequencies of the whole domain: the cap
estimates each mean from a sample, it does not reweight the domain.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse

from pipeline.analysis.similarity import ClassMeans

CHUNK_ROWS = 32_768   # rows read at a time (x 2048 features x 8 bytes: 0.5 GiB at most)


def capped_rows(index: np.ndarray, classes: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Boolean mask of the rows kept: every row, or at most ``max_per_class`` per class (seeded per class)."""
    keep = np.ones(len(index), dtype=bool)
    if max_per_class is None:
        return keep
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(len(classes) + 1))
    for k, label in enumerate(classes):
        rows = order[bounds[k]:bounds[k + 1]]   # the class's rows, in file order
        if len(rows) > max_per_class:
            keep[rows] = False
            keep[np.random.default_rng([int(seed), int(label)]).choice(rows, max_per_class, replace=False)] = True
    return keep


def domain_class_means(path: str | Path, splits: list[str] | None = None, max_per_class: int | None = None,
                       seed: int = 0) -> tuple[ClassMeans, int]:
    """The domain of ``splits`` (default: the file's train and val splits) as class means, and the images used."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        splits = list(splits or dict.fromkeys([meta.get("train_split", "train"), meta.get("val_split", "id_val")]))
        missing = [s for s in splits if f"{s}/labels" not in f.keys()]
        if missing:
            raise ValueError(f"{path}: no split {missing[0]!r} in the features file (it has "
                             f"{sorted({k.split('/')[0] for k in f.keys()})})")
        labels = [np.asarray(f.get_tensor(f"{s}/labels")) for s in splits]
        y = np.concatenate(labels)
        if not len(y):
            raise ValueError(f"{path}: splits {splits} hold no images")
        classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
        keep = capped_rows(index, classes, max_per_class, seed)
        sums: np.ndarray | None = None
        offset = 0
        for split, lab in zip(splits, labels):
            features = f.get_slice(f"{split}/features")
            for a in range(0, len(lab), CHUNK_ROWS):
                b = min(len(lab), a + CHUNK_ROWS)
                rows = np.flatnonzero(keep[offset + a:offset + b])
                if not len(rows):
                    continue
                x = np.asarray(features[a:b], dtype=np.float64)[rows]
                if not np.all(np.isfinite(x)):
                    raise ValueError(f"{path}: {split}/features has NaN or infinite values")
                # the chunk's rows summed into their classes: a sparse one-hot [K, rows] times the features
                onehot = sparse.csr_matrix((np.ones(len(rows)), (index[offset + a + rows], np.arange(len(rows)))),
                                           shape=(len(classes), len(rows)))
                part = onehot @ x
                sums = part if sums is None else sums + part
            offset += len(lab)
    used = np.bincount(index[keep], minlength=len(classes))
    return ClassMeans(means=sums / used[:, None], weights=counts / counts.sum(), classes=classes), int(used.sum())
