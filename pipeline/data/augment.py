"""Batched augmentation and normalisation of uint8 batches on their device, in pure torch.

Random-resized-crop, flip and normalisation without a per-image Python loop: one
``grid_sample`` call crops, resizes and flips the whole batch wherever the batch
lives (no torchvision ops, whose compiled kernels do not load on CPU torch).

Random draws stay on the CPU. :func:`draw_crops` makes exactly the generator calls
of the per-image implementation this replaced, in the same order, so the boxes and
flips of a batch, and the generator's state after it, are the same on any device::

    area  = torch.empty(n).uniform_(scale[0], scale[1], generator=g)   # n draws
    top   = torch.rand(n, generator=g)                                  # n draws
    left  = torch.rand(n, generator=g)                                  # n draws
    flip  = torch.rand(n, generator=g) < 0.5      # n draws, only if hflip

(these calls even when the crop is the identity). The resize is a float32 bilinear sample
of the uint8 pixels, never rounded to uint8 (the per-image path resized in uint8 fixed
point, up to about one grey level off). It equals ``F.interpolate(crop.float(),
(H, W), mode="bilinear", align_corners=False)`` of each crop up to float rounding
of the sampling grid (well under 0.01 of 255). Boxes covering the whole (square) image are sampled at
integer positions to the same precision; a batch whose boxes all cover the image,
e.g. ``scale=(1, 1)``, skips the sampling entirely and is exact.

Nothing here reads a device tensor back on the host: on CUDA no function syncs.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Layout = Literal["NHWC", "NCHW"]


@dataclass(frozen=True)
class Crops:
    """One batch's square crop boxes (pixels) and flips, as CPU tensors of length n."""

    side: torch.Tensor   # int64, box side in pixels
    top: torch.Tensor    # int64, first row of the box
    left: torch.Tensor   # int64, first column of the box
    flip: torch.Tensor   # bool, mirror left-right after the resize

    def __len__(self) -> int:
        return len(self.side)

    def __getitem__(self, index: slice | torch.Tensor) -> Crops:
        """The crops of some images, e.g. a DDP rank's slice of the global batch's draws."""
        return Crops(self.side[index], self.top[index], self.left[index], self.flip[index])

    def covers(self, size: tuple[int, int]) -> bool:
        """Every box is the whole image (a CPU check: no device sync)."""
        return size[0] == size[1] and bool((self.side == size[0]).all())


def draw_crops(n: int, size: tuple[int, int], scale: tuple[float, float], hflip: bool,
               generator: torch.Generator) -> Crops:
    """Draw ``n`` boxes (the same calls, order and values as the per-image implementation this replaced).

    A box is square, covers a ``U(scale)`` fraction of the area of the largest
    square that fits in ``size = (H, W)``, and lies at a uniform integer position.
    """
    h, w = size
    full = min(h, w)
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    side = (area.sqrt() * full).round().clamp(1, full).long()
    top = (torch.rand(n, generator=generator) * (h - side + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - side + 1)).long()
    flip = (torch.rand(n, generator=generator) < 0.5) if hflip else torch.zeros(n, dtype=torch.bool)
    return Crops(side, top, left, flip)


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with ``(x / 255 - mean) / std == shift + x * scale``.

    Cached per device: building them costs a host-to-device copy, which must not
    happen every step.
    """
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
    return shift.to(device), (1.0 / (255.0 * std_t)).to(device)


def _nchw(images: torch.Tensor, layout: Layout) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 [N,H,W,C] or [N,C,H,W] batch, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2) if layout == "NHWC" else images


def _normalize_into(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype,
                    memory_format: torch.memory_format) -> torch.Tensor:
    """``shift + x * scale`` (float32 arithmetic) written once, straight into the requested dtype and layout."""
    shift, scale = _affine(tuple(mean), tuple(std), x.device)
    out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format)
    return torch.addcmul(shift, x, scale, out=out)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, layout: Layout = "NHWC",
              dtype: torch.dtype = torch.float32,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 batch on its device -> normalised ``dtype`` NCHW: the evaluation / feature-extraction transform.

    ``(x / 255 - mean) / std`` as one fused multiply-add in float32.
    """
    return _normalize_into(_nchw(images, layout), mean, std, dtype, memory_format)


def _grid_axis(side: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised ``grid_sample`` coordinates [n, size] of the boxes' resized samples along one axis.

    The source position of output pixel ``i`` is ``F.interpolate``'s (align_corners=False),
    ``(i + 0.5) * side / size - 0.5`` in the box, clamped to the box: interpolate clamps at 0
    and repeats the last pixel, so a sample never blends in a pixel outside the box.
    Elementwise float32 ops only (no matmul as in ``affine_grid``, which TF32 would round).
    """
    ratio = side.to(torch.float32) / size
    pos = torch.arange(size, device=side.device, dtype=torch.float32).add_(0.5)
    src = (ratio[:, None] * pos - 0.5).clamp_min_(0).minimum((side - 1)[:, None].to(torch.float32))
    return (src + offset[:, None]).mul_(2).add_(1).div_(size).sub_(1)   # pixel -> [-1, 1], align_corners=False


def resized_crop(images: torch.Tensor, crops: Crops, mean: Sequence[float], std: Sequence[float], *,
                 layout: Layout = "NHWC", dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Crop each image to its box, resize it back to the full size (bilinear), flip it, normalise it.

    ``images`` is a uint8 batch on any device; ``crops`` (CPU) come from
    :func:`draw_crops`. Returns ``dtype`` NCHW in ``memory_format`` on the images'
    device; the resize is computed in float32 whatever ``dtype``.
    """
    x = _nchw(images, layout)
    n, _, h, w = x.shape
    if len(crops) != n:
        raise ValueError(f"{len(crops)} crops for {n} images")
    device = x.device
    if crops.covers((h, w)):  # nothing to resample: a mirror at most, exact
        if bool(crops.flip.any()):
            x = torch.where(_to_device(crops.flip.view(n, 1, 1, 1), device), x.flip(3), x)
        return _normalize_into(x, mean, std, dtype, memory_format)
    side, top, left, flip = _to_device(torch.stack([crops.side, crops.top, crops.left, crops.flip.long()]), device)
    gx = _grid_axis(side, left, w)
    gx = torch.where(flip.bool()[:, None], gx.flip(1), gx)  # a mirrored output reads its columns right to left
    gy = _grid_axis(side, top, h)
    grid = torch.empty((n, h, w, 2), dtype=torch.float32, device=device)
    grid[..., 0] = gx[:, None, :]   # separable: x depends on the column only, y on the row only
    grid[..., 1] = gy[:, :, None]
    xf = x.to(torch.float32, memory_format=torch.contiguous_format)
    # "border" only guards against rounding a hair past the image edge; the grid stays inside each box.
    sampled = F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _normalize_into(sampled, mean, std, dtype, memory_format)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without a host sync: pageable host-to-CUDA copies sync the stream."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)   # the host allocator keeps the block until copied
    return t.to(device)


@dataclass(frozen=True)
class Augment:
    """A run's training transform: random-resized-crop + flip + normalisation of uint8 batches.

    ``scale=(1, 1)`` with square images and ``hflip=False`` is the identity crop:
    only the normalisation runs (the draws still happen).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    layout: Layout = "NHWC"
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format

    def size(self, images: torch.Tensor) -> tuple[int, int]:
        """(H, W) of a batch in this transform's layout."""
        return tuple(images.shape[1:3] if self.layout == "NHWC" else images.shape[2:4])

    def draw(self, n: int, size: tuple[int, int], generator: torch.Generator) -> Crops:
        """The CPU draws for ``n`` images; draw for the global batch, then slice it per DDP rank."""
        return draw_crops(n, size, self.scale, self.hflip, generator)

    def apply(self, images: torch.Tensor, crops: Crops) -> torch.Tensor:
        return resized_crop(images, crops, self.mean, self.std, layout=self.layout, dtype=self.dtype,
                            memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw for this batch from ``generator`` (CPU), then crop, flip and normalise on the batch's device."""
        return self.apply(images, self.draw(len(images), self.size(images), generator))

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Normalisation only (evaluation, features), same layout, dtype and memory format."""
        return normalize(images, self.mean, self.std, layout=self.layout, dtype=self.dtype,
                         memory_format=self.memory_format)
