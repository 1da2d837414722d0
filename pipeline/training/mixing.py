"""The training loss of a batch: cross-entropy, or mixup / CutMix with soft targets (timm's own code).

Without mixing (``mixup_alpha`` and ``cutmix_alpha`` 0, the default) the loss is torch's
cross-entropy with ``label_smoothing``. With either on, each (micro-)batch of augmented,
normalised images on the device goes through timm's ``Mixup`` (its modes, probabilities and
lambda draws) and the loss is timm's ``SoftTargetCrossEntropy``; the label smoothing is then
Mixup's (its targets are ``(1 - s) onehot + s / K`` before mixing, the same rule as torch's), so
it is applied once, as timm's train.py does. Mixup draws from NumPy's global generator, which every
run seeds (``seed_everything``) and every checkpoint saves and restores: runs are reproducible and
resume exactly. Batches must be even (Mixup pairs image i with image n - 1 - i).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline import compat

compat.apply()
from timm.data import Mixup  # noqa: E402
from timm.loss import SoftTargetCrossEntropy  # noqa: E402


@dataclass(frozen=True)
class MixSpec:
    """timm ``Mixup`` arguments a run sets (``mixup_*`` / ``cutmix_alpha`` settings)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    @property
    def on(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @classmethod
    def of(cls, settings: dict) -> MixSpec:
        """From a run's resolved settings."""
        return cls(float(settings["mixup_alpha"]), float(settings["cutmix_alpha"]), float(settings["mixup_prob"]),
                   float(settings["mixup_switch_prob"]), str(settings["mixup_mode"]))


class Criterion:
    """``mix(images, labels) -> (images, targets)`` before the forward pass, ``loss(logits, targets)`` after it."""

    def __init__(self, spec: MixSpec, label_smoothing: float, num_classes: int):
        self.label_smoothing = label_smoothing
        self.mixup = None
        if spec.on:
            if num_classes < 2:
                raise ValueError("mixup/CutMix needs the number of classes (LoopConfig.num_classes)")
            self.mixup = Mixup(mixup_alpha=spec.mixup_alpha, cutmix_alpha=spec.cutmix_alpha, prob=spec.prob,
                               switch_prob=spec.switch_prob, mode=spec.mode, label_smoothing=label_smoothing,
                               num_classes=num_classes)
            self.soft = SoftTargetCrossEntropy()

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is None:
            return images, labels
        if len(images) % 2:
            raise ValueError(f"mixup/CutMix pairs images: a batch of {len(images)} per process and micro-batch is odd")
        return self.mixup(images, labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is None:
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return self.soft(logits, targets)
