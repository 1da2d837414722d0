"""uint8 image shards -> normalised float batches, and augmentation on tensors.

Decoding happened once in the prepare stage; here images are only cropped,
resized and flipped while still uint8 (a quarter of the bytes of float), then
converted and normalised with the backbone's mean/std in a single pass.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def as_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC tensor; copies out of read-only memory maps."""
    return images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NCHW -> float NCHW, ``(x / 255 - mean) / std`` computed as one fused multiply-add."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
    return torch.addcmul(shift, x, 1.0 / (255.0 * std_t))


def to_float(images: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC (a shard slice) -> normalised float NCHW."""
    return normalize(as_uint8(images).permute(0, 3, 1, 2).contiguous(), mean, std)


def random_resized_crop(images: np.ndarray | torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        hflip: bool = False) -> torch.Tensor:
    """Per-image random square crop covering ``scale`` of the area, resized back (bilinear); optional flip.

    Takes uint8 NHWC (a shard slice) and returns uint8 NCHW of the same size, ready
    for :func:`normalize`. Boxes are integer pixel boxes, as in torchvision's
    RandomResizedCrop; every draw comes from ``generator``, so a run augments
    identically on any device.
    """
    x = as_uint8(images)
    n, h, w = x.shape[:3]
    full = min(h, w)
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    side = (area.sqrt() * full).round().clamp(1, full).long()
    top = (torch.rand(n, generator=generator) * (h - side + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - side + 1)).long()
    flip = (torch.rand(n, generator=generator) < 0.5) if hflip else torch.zeros(n, dtype=torch.bool)
    out = torch.empty((n, x.shape[3], h, w), dtype=torch.uint8)
    for i in range(n):
        s, t, lft = int(side[i]), int(top[i]), int(left[i])
        crop = x[i, t:t + s, lft:lft + s].permute(2, 0, 1)
        if s != h or s != w:
            crop = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
