"""uint8 image shards -> normalised float batches, and augmentation on tensors.

Decoding happened once in the prepare stage; here images are only converted,
normalised with the backbone's mean/std and (for training) randomly cropped and
flipped, all as batched tensor ops.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def to_float(images: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised with per-channel mean/std."""
    # torch.tensor copies: shards are read-only memory maps.
    x = images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        hflip: bool = False) -> torch.Tensor:
    """Per-image random square crop covering ``scale`` of the area, resized back; optional flip.

    Implemented as one batched ``affine_grid`` + ``grid_sample`` (bilinear).
    """
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    side = area.sqrt()                                   # crop side as a fraction of the image
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - side)  # keep the crop inside the image
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - side)
    sx = side.clone()
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = side, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
