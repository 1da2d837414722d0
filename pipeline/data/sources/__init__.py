"""The dataset sources users can name in ``params.yaml`` (``datasets.<name>.source``).

Pure data, cheap to import (the Snakefile and the params check read it): which
module builds each source and which ``datasets.<name>`` keys it accepts. Each
module exposes ``manifest(name, cfg) -> Manifest`` (:mod:`pipeline.data.sources.base`);
``digits`` is the embedded default and builds its arrays directly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceSpec:
    module: str
    keys: tuple[str, ...]          # dataset keys this source reads, besides source/train_augment
    doc: str
    data_files: tuple[str, ...] = ()   # data shipped in the repo that preparation reads


# Every source but digits reads files under `root`; `download` (the download stage, not preparation)
# says whether they may be fetched there.
_IMAGE = ("root", "image_size", "download")
_HOLDOUT = ("id_val_fraction", "seed")
SOURCES: dict[str, SourceSpec] = {
    "digits": SourceSpec("pipeline.data.digits", ("build",),
                         "embedded default: MNIST -> MNIST-M-style and scikit-learn digits"),
    "waterbirds": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS Waterbirds v1.0"),
    "camelyon17": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS Camelyon17 v1.0"),
    "fmow": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS FMoW v1.1"),
    "iwildcam": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS iWildCam v2.0"),
    "domainnet": SourceSpec("pipeline.data.sources.domainnet",
                            _IMAGE + _HOLDOUT + ("id_domain", "ood_domains", "classes", "ood_val_fraction"),
                            "DomainNet, official per-domain split files"),
    "cifar10": SourceSpec("pipeline.data.sources.cifar", _IMAGE + _HOLDOUT + ("ood",),
                          "CIFAR-10 -> STL-10 (9 shared classes), CIFAR-10.1"),
    "imagenet": SourceSpec("pipeline.data.sources.imagenet", _IMAGE + _HOLDOUT + ("ood",),
                           "ImageNet -> ImageNetV2, -R, -Sketch, -A"),
    "living17": SourceSpec("pipeline.data.sources.breeds", _IMAGE + _HOLDOUT + ("ood_val_fraction",),
                           "BREEDS Living-17 (source -> target subclasses of ImageNet)",
                           ("pipeline/data/breeds/living17.json",)),
    "entity30": SourceSpec("pipeline.data.sources.breeds", _IMAGE + _HOLDOUT + ("ood_val_fraction",),
                           "BREEDS Entity-30 (source -> target subclasses of ImageNet)",
                           ("pipeline/data/breeds/entity30.json",)),
}
# Keys any dataset may set; read by fine-tuning (augmentation, training defaults), not by preparation.
COMMON_KEYS = ("source", "train_augment", "finetune", "models")
# What prepare_data reads: every source key but `download` (the download stage's alone).
PREPARE_KEYS = tuple(sorted({k for s in SOURCES.values() for k in s.keys} - {"download"} | {"source"}))
DEFAULT_ROOT = "data/raw"
DEFAULT_IMAGE_SIZE = 224
