"""The dataset sources users can name in ``params.yaml`` (``datasets.<name>.source``).

Pure data, cheap to import (the Snakefile and the params check read it): which
module builds each source, which ``datasets.<name>`` keys it accepts and what they default to.
Each module exposes ``manifest(name, cfg) -> Manifest`` (:mod:`pipeline.data.sources.base`);
``digits`` is the embedded default and builds its arrays directly. A new source is one module
plus one entry here; the entry's defaults are tracked per job (:mod:`pipeline.config.defaults`),
so adding one re-runs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_ROOT = "data/raw"
# How every source stores its images (pipeline/data/images.py): aspect kept, the shorter side at most
# storage_size: 256 serves the shipped recipes' 224-px crops (timm's crop_pct 0.875 resizes to exactly 256);
# set 384 for 336-px models. JPEG at quality 90: about a fifth of the raw pixels' disk (bench/data_loading.py).
STORAGE_DEFAULTS = {"storage_size": 256, "encoding": "jpeg", "jpeg_quality": 90}
_FILE_DEFAULTS = {"root": DEFAULT_ROOT, **STORAGE_DEFAULTS}
# The training crop (`datasets.<d>.train_augment`): torchvision's RandomResizedCrop defaults (scale, ratio,
# bilinear: pytorch/vision@8fb87713a24951e639c494b0f2a8a81b5f8e33a6:torchvision/transforms/v2/_geometry.py:258),
# no flip (a recipe adds RandomHorizontalFlip: `hflip: true`).
TRAIN_AUGMENT_DEFAULTS = {"crop_scale": [0.08, 1.0], "ratio": [0.75, 1.3333333333333333], "hflip": False,
                          "interpolation": "bilinear"}


@dataclass(frozen=True)
class SourceSpec:
    module: str
    keys: tuple[str, ...]          # dataset keys this source reads, besides source/train_augment
    doc: str
    data_files: tuple[str, ...] = ()   # data shipped in the repo that preparation reads
    # What keys the entry leaves out resolve to (a dict value merges with the entry's own).
    defaults: dict[str, Any] = field(default_factory=lambda: dict(_FILE_DEFAULTS))

    @property
    def reads_files(self) -> bool:
        """Reads files under ``root`` that the download stage may fetch (every source but the embedded digits)."""
        return "root" in self.keys


# Every source but digits reads files under `root`; `download` (the download stage, not preparation)
# says whether they may be fetched there.
STORAGE_KEYS = tuple(STORAGE_DEFAULTS)
_IMAGE = ("root", *STORAGE_KEYS, "download")
_HOLDOUT = ("id_val_fraction", "seed")
DIGITS_BUILD = {"train_per_class": 100, "val_per_class": 50, "test_per_class": 50, "ood_per_class": 50, "seed": 0,
                "classes": 10}
SOURCES: dict[str, SourceSpec] = {
    "digits": SourceSpec("pipeline.data.digits", (*STORAGE_KEYS, "build"),
                         "embedded default: MNIST -> MNIST-M-style and scikit-learn digits",
                         defaults={**STORAGE_DEFAULTS, "build": DIGITS_BUILD}),
    "waterbirds": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS Waterbirds v1.0"),
    "camelyon17": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS Camelyon17 v1.0"),
    "fmow": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS FMoW v1.1"),
    "iwildcam": SourceSpec("pipeline.data.sources.wilds", _IMAGE, "WILDS iWildCam v2.0"),
    "domainnet": SourceSpec("pipeline.data.sources.domainnet",
                            _IMAGE + _HOLDOUT + ("id_domain", "ood_domains", "classes", "ood_val_fraction"),
                            "DomainNet, official per-domain split files"),
    "cifar10": SourceSpec("pipeline.data.sources.cifar", _IMAGE + _HOLDOUT + ("ood",),
                          "CIFAR-10 -> STL-10 (9 shared classes), CIFAR-10.1"),
    "imagenet": SourceSpec("pipeline.data.sources.imagenet", _IMAGE + _HOLDOUT + ("ood", "id_val_held_out"),
                           "ImageNet -> ImageNetV2, -R, -Sketch, -A"),
    "living17": SourceSpec("pipeline.data.sources.breeds", _IMAGE + _HOLDOUT + ("ood_val_fraction",),
                           "BREEDS Living-17 (source -> target subclasses of ImageNet)",
                           ("pipeline/data/breeds/living17.json",)),
    "entity30": SourceSpec("pipeline.data.sources.breeds", _IMAGE + _HOLDOUT + ("ood_val_fraction",),
                           "BREEDS Entity-30 (source -> target subclasses of ImageNet)",
                           ("pipeline/data/breeds/entity30.json",)),
    # Targets of Li et al. (2020): an official train/test split, no OOD split (official_split.py).
    "stanford_dogs": SourceSpec("pipeline.data.sources.stanford_dogs", _IMAGE + _HOLDOUT,
                                "Stanford Dogs, official split (ID only)"),
    "caltech256": SourceSpec("pipeline.data.sources.caltech256",
                             _IMAGE + _HOLDOUT + ("train_per_class", "test_per_class", "clutter", "split_seed"),
                             "Caltech-256, seeded per-class split (Caltech-256-60; ID only)"),
    "mit_indoor67": SourceSpec("pipeline.data.sources.mit_indoor67", _IMAGE + _HOLDOUT,
                               "MIT Indoor-67, official split (ID only)"),
    "cub200": SourceSpec("pipeline.data.sources.cub200", _IMAGE + _HOLDOUT, "CUB-200-2011, official split (ID only)"),
    "stanford_cars": SourceSpec("pipeline.data.sources.stanford_cars", _IMAGE + _HOLDOUT,
                                "Stanford Cars, official split (ID only; placed by hand)"),
    "fgvc_aircraft": SourceSpec("pipeline.data.sources.fgvc_aircraft", _IMAGE + _HOLDOUT,
                                "FGVC-Aircraft 2013b variants, trainval / test (ID only)"),
    "flowers102": SourceSpec("pipeline.data.sources.flowers102", _IMAGE + _HOLDOUT,
                             "Oxford Flowers-102, train+val / test (ID only)"),
}
# Keys any dataset may set; read by fine-tuning (augmentation, training defaults, method overrides) and the
# linear probe, not by preparation.
COMMON_KEYS = ("source", "train_augment", "finetune", "models", "methods", "linear_probe")
# What prepare_data reads: every source key but `download` (the download stage's alone).
PREPARE_KEYS = tuple(sorted({k for s in SOURCES.values() for k in s.keys} - {"download"} | {"source"}))


def train_augment(entry: Any) -> dict[str, Any]:
    """A dataset entry's ``train_augment`` with :data:`TRAIN_AUGMENT_DEFAULTS` filled in (reads that key only)."""
    return {**TRAIN_AUGMENT_DEFAULTS, **dict(entry.get("train_augment") or {})}


def dataset_settings(entry: Any) -> dict[str, Any]:
    """A ``datasets.<name>`` entry with its source's defaults filled in (a plain dict)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SOURCES[entry["source"]].defaults.items()}
    for key, value in entry.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) else value
    return out
