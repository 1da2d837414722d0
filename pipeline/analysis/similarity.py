"""Domain similarity of Cui et al. (CVPR 2018, section 4.1), as Li et al. (ICLR 2020, appendix B) use it.

A domain (the source's or the target's training set) is represented by its classes: each class by
the mean of its images' features from the pretrained backbone (penultimate layer), weighted by the
share of the domain's images it holds (weights sum to 1). The distance between two domains is
the Earth Mover's Distance between these weighted class means, with the Euclidean distance
between class means as ground distance::

    EMD(S, T) = sum_ij f_ij d_ij / sum_ij f_ij,   d_ij = ||g(s_i) - g(t_j)||_2

where ``f`` is the optimal flow (with weights summing to 1, ``sum f = 1``), and the similarity is
``sim(S, T) = exp(-gamma * EMD(S, T))`` with ``gamma = 0.01``: in (0, 1], larger = more similar, though
"not ranging from 0 to 1" in practice (Li et al.): their Table 4 reports 0.84-0.89 for ImageNet
ResNet-101 features against their seven targets. The transport problem is solved exactly by POT
(``ot.emd2``, the network simplex), never by an approximation.

Pure functions on arrays; no stage (the features come from :mod:`pipeline.models.features` or any
extractor)::

    src = class_means(source_features, source_labels)
    tgt = class_means(target_features, target_labels)
    emd(src, tgt), similarity(src, tgt)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GAMMA = 0.01   # Cui et al. (2018) and Li et al. (2020)
NUM_ITER_MAX = 10_000_000   # network-simplex iterations: ample for thousands of classes (iNat's 5,089)


@dataclass(frozen=True)
class ClassMeans:
    """A domain as weighted class means: ``means[k]`` is the mean feature of class ``classes[k]``,
    ``weights[k]`` the share of the domain's examples in that class (the weights sum to 1)."""

    means: np.ndarray     # float64 [K, D]
    weights: np.ndarray   # float64 [K]
    classes: np.ndarray   # the label of each row, sorted

    def __post_init__(self) -> None:
        if self.means.ndim != 2 or self.weights.shape != (len(self.means),) or len(self.classes) != len(self.means):
            raise ValueError(f"class means {self.means.shape}, weights {self.weights.shape} and classes "
                             f"{np.shape(self.classes)} do not match")
        if not len(self.means):
            raise ValueError("a domain needs at least one class")
        if not np.all(np.isfinite(self.means)) or np.any(self.weights < 0) or not np.isclose(self.weights.sum(), 1.0):
            raise ValueError("class means must be finite and weights non-negative, summing to 1")


def class_means(features, labels) -> ClassMeans:
    """Per-class mean feature and class frequency (normalised to sum 1) of ``features [N, D]`` with ``labels [N]``.

    Labels may be any integers (or strings); rows follow the sorted unique labels. Accepts numpy
    arrays or torch tensors (converted to float64 numpy first).
    """
    x = _numpy(features)
    y = np.asarray(_numpy(labels, float_=False))
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"features must be [N, D] and labels [N], got {x.shape} and {y.shape}")
    if not len(x):
        raise ValueError("no examples: a domain needs at least one")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), x.shape[1]), dtype=np.float64)
    np.add.at(sums, index, x)
    return ClassMeans(means=sums / counts[:, None], weights=counts / counts.sum(), classes=classes)


def ground_distance(source: ClassMeans, target: ClassMeans) -> np.ndarray:
    """``d_ij = ||g(s_i) - g(t_j)||_2``: Euclidean distances between every source and target class mean."""
    import ot

    if source.means.shape[1] != target.means.shape[1]:
        raise ValueError(f"feature sizes differ: {source.means.shape[1]} (source) vs {target.means.shape[1]} (target)")
    return np.asarray(ot.dist(source.means, target.means, metric="euclidean"), dtype=np.float64)


def emd(source: ClassMeans, target: ClassMeans) -> float:
    """The Earth Mover's Distance between two domains' weighted class means (``ot.emd2``, exact)."""
    import ot

    a, b = _normalised(source.weights), _normalised(target.weights)
    cost, log = ot.emd2(a, b, ground_distance(source, target), numItermax=NUM_ITER_MAX, log=True)
    if log.get("warning"):
        raise RuntimeError(f"EMD did not converge: {log['warning']}")
    return float(cost)   # = sum f d / sum f, since the flow carries all of the unit mass


def similarity_from_emd(distance: float, gamma: float = GAMMA) -> float:
    """``exp(-gamma * distance)``."""
    if distance < 0 or gamma < 0:
        raise ValueError(f"distance and gamma must be non-negative, got {distance} and {gamma}")
    return math.exp(-gamma * distance)


def similarity(source: ClassMeans, target: ClassMeans, gamma: float = GAMMA) -> float:
    """Cui et al.'s domain similarity ``exp(-gamma * EMD(source, target))``, gamma 0.01."""
    return similarity_from_emd(emd(source, target), gamma)


def domain_similarity(source_features, source_labels, target_features, target_labels,
                      gamma: float = GAMMA) -> dict[str, float]:
    """``{"emd", "similarity", "source_classes", "target_classes"}`` straight from two labelled feature sets."""
    src, tgt = class_means(source_features, source_labels), class_means(target_features, target_labels)
    d = emd(src, tgt)
    return {"emd": d, "similarity": similarity_from_emd(d, gamma), "source_classes": len(src.classes),
            "target_classes": len(tgt.classes)}


def _normalised(weights: np.ndarray) -> np.ndarray:
    """Weights as float64 summing to 1 to rounding (POT checks that both marginals carry the same mass)."""
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _numpy(values, float_: bool = True) -> np.ndarray:
    if hasattr(values, "detach"):   # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64) if float_ else np.asarray(values)
