"""The model's input transforms of a batch, on the batch's device: the recipe's training crop and the eval transform.

Both take a batch of stored images of several sizes (:class:`~pipeline.data.resample.Images`, from
:class:`pipeline.data.loader.Prefetcher`) and return normalised ``dtype`` NCHW tensors of the model's
input size; the resampling is :mod:`pipeline.data.resample` (torch's antialiased bilinear / bicubic).

* :class:`TrainTransform`: torchvision's ``RandomResizedCrop(size, scale, ratio, interpolation,
  antialias=True)``, an optional horizontal flip, then ``(x / 255 - mean) / std``. The crop boxes
  are drawn from the stored image (its whole extent, aspect jitter included).
* :class:`EvalTransform`: the model's own eval transform, timm's ``Resize(floor(size / crop_pct))``
  + ``CenterCrop(size)`` (``crop_mode: center``, also OpenCLIP's ``shortest``) or ``Resize((s, s))``
  + ``CenterCrop`` (``squash``), with the model's interpolation, mean and std.

Random draws stay on the CPU, from the run's generator: :func:`draw_crops` makes a fixed number of
generator calls per batch, whatever the image sizes, in this order::

    area   = torch.empty((n, 10), dtype=float64).uniform_(scale[0], scale[1], generator=g)   # 10 attempts
    logr   = torch.empty((n, 10), dtype=float64).uniform_(log ratio[0], log ratio[1], generator=g)
    top    = torch.rand(n, dtype=float64, generator=g)
    left   = torch.rand(n, dtype=float64, generator=g)
    flip   = torch.rand(n, generator=g) < 0.5                                                # only if hflip

and each image takes its first attempt whose box fits, else torchvision's fallback (the centre crop
of the clamped aspect ratio): the distribution of ``RandomResizedCrop.get_params``. So the boxes and
flips of a batch, and the generator's state after it, are the same on any device.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.resample import INTERPOLATIONS, Images, Method, Plan, resample

ATTEMPTS = 10   # torchvision's RandomResizedCrop tries 10 boxes before falling back to the centre crop
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class Crops:
    """One batch's crop boxes (pixels of the stored images) and flips, as CPU tensors of length n."""

    top: torch.Tensor     # int64
    left: torch.Tensor    # int64
    height: torch.Tensor  # int64
    width: torch.Tensor   # int64
    flip: torch.Tensor    # bool: mirror left-right after the resize

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, index: slice | torch.Tensor) -> Crops:
        """The crops of some images, e.g. a DDP rank's slice of the global batch's draws."""
        return Crops(self.top[index], self.left[index], self.height[index], self.width[index], self.flip[index])


def draw_crops(shapes: torch.Tensor, scale: Sequence[float], ratio: Sequence[float], hflip: bool,
               generator: torch.Generator) -> Crops:
    """``RandomResizedCrop.get_params`` for images of ``shapes`` ([n, 2]: height, width), vectorised.

    Arithmetic in float64 like torchvision's Python floats; ``round`` is round-half-even in both. The
    arithmetic is numpy's: torch hands float64 ``sqrt``/``exp`` to MKL's threads, whose start-up costs a
    scheduler time slice per call on a busy machine.
    """
    shapes = torch.as_tensor(shapes, dtype=torch.int64).reshape(-1, 2)
    n = len(shapes)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    u_area = torch.empty((n, ATTEMPTS), dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    u_ratio = torch.empty((n, ATTEMPTS), dtype=torch.float64).uniform_(*log_ratio, generator=generator)
    u_top = torch.rand(n, dtype=torch.float64, generator=generator).numpy()
    u_left = torch.rand(n, dtype=torch.float64, generator=generator).numpy()
    flip = (torch.rand(n, generator=generator) < 0.5) if hflip else torch.zeros(n, dtype=torch.bool)
    h, w = shapes[:, 0:1].numpy().astype(np.float64), shapes[:, 1:2].numpy().astype(np.float64)
    area, aspect = u_area.numpy() * h * w, np.exp(u_ratio.numpy())
    cw, ch = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    pick = fits.argmax(1)[:, None]   # the first box that fits
    ok = fits.any(1)
    cw, ch = np.take_along_axis(cw, pick, 1)[:, 0], np.take_along_axis(ch, pick, 1)[:, 0]
    h, w = h[:, 0], w[:, 0]
    # torchvision's fallback: the whole image, its aspect ratio clamped to [ratio] by a centred crop
    in_ratio = w / h
    lo, hi = min(ratio), max(ratio)
    fb_w = np.where(in_ratio > hi, np.round(h * hi), w)
    fb_h = np.where(in_ratio < lo, np.round(w / lo), h)
    cw, ch = np.where(ok, cw, fb_w), np.where(ok, ch, fb_h)
    top = np.where(ok, np.floor(u_top * (h - ch + 1)), np.floor((h - ch) / 2))
    left = np.where(ok, np.floor(u_left * (w - cw + 1)), np.floor((w - cw) / 2))
    return Crops(*(torch.from_numpy(v.astype(np.int64)) for v in (top, left, ch, cw)), flip)


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) with ``(x / 255 - mean) / std == shift + x * scale``.

    Cached per device: building them costs a host-to-device copy, which must not happen every step.
    """
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
    return shift.to(device), (1.0 / (255.0 * std_t)).to(device)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Pixel values NCHW (uint8 or float) -> ``(x / 255 - mean) / std`` as one fused multiply-add in float32,
    written once, straight into ``dtype`` and ``memory_format``."""
    shift, scale = _affine(tuple(mean), tuple(std), x.device)
    out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format)
    return torch.addcmul(shift, x, scale, out=out)


def _check(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")


@dataclass(frozen=True)
class _Transform:
    """What both transforms share: the model's input side and normalisation, the output's dtype and
    memory format, the resampling executor (:mod:`pipeline.data.resample`)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: torch.dtype = field(default=torch.float32, kw_only=True)
    memory_format: torch.memory_format = field(default=torch.contiguous_format, kw_only=True)
    method: Method = field(default="auto", kw_only=True)

    def _run(self, images: Images, plan: Plan, interpolation: str) -> torch.Tensor:
        """Resample the plan's crops, normalise: ``dtype`` NCHW on the images' device."""
        pixels = resample(images, plan, interpolation, self.method)
        return normalize(pixels, self.mean, self.std, self.dtype, self.memory_format)


@dataclass(frozen=True)
class TrainTransform(_Transform):
    """A run's training transform: random-resized crop of the recipe + flip + normalisation, batched.

    ``size``: the model's input side; ``scale``, ``ratio``, ``interpolation``: RandomResizedCrop's;
    ``hflip``: RandomHorizontalFlip (p = 0.5). The train transform of a batch is
    ``TrainTransform(...)(batch.images, generator)``, or ``apply(images, draw(shapes, generator))``.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        _check(self.interpolation)

    def draw(self, shapes: torch.Tensor, generator: torch.Generator) -> Crops:
        """The CPU draws for images of ``shapes`` [n, 2]; draw for the global batch, then slice per DDP rank."""
        return draw_crops(shapes, self.scale, self.ratio, self.hflip, generator)

    def plan(self, crops: Crops) -> Plan:
        n, s = len(crops), self.size
        return Plan(torch.stack([crops.top, crops.left], 1), torch.stack([crops.top + crops.height,
                                                                          crops.left + crops.width], 1),
                    torch.full((n, 2), s, dtype=torch.int64), torch.zeros((n, 2), dtype=torch.int64), crops.flip,
                    (s, s))

    def apply(self, images: Images, crops: Crops) -> torch.Tensor:
        """Crop each image to its box, resize it, flip it, normalise it: ``dtype`` NCHW on the images' device."""
        return self._run(images, self.plan(crops), self.interpolation)

    def __call__(self, images: Images, generator: torch.Generator) -> torch.Tensor:
        """Draw for this batch from ``generator`` (CPU), then crop, flip and normalise on the batch's device."""
        return self.apply(images, self.draw(images.shapes, generator))


@dataclass(frozen=True)
class EvalTransform(_Transform):
    """A model's eval transform: resize to ``floor(size / crop_pct)``, centre crop ``size``, normalise."""

    crop_pct: float = 1.0
    crop_mode: str = "center"
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _check(self.interpolation)
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode {self.crop_mode!r} is not supported (one of {', '.join(CROP_MODES)})")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct {self.crop_pct} must lie in (0, 1] (a crop larger than the resize pads)")

    @property
    def resize(self) -> int:
        """timm's ``scale_size``: ``floor(size / crop_pct)``."""
        return math.floor(self.size / self.crop_pct)

    def plan(self, shapes: torch.Tensor) -> Plan:
        """torchvision's ``Resize(resize)`` (shorter side; ``squash``: both) then ``CenterCrop(size)``."""
        shapes = torch.as_tensor(shapes, dtype=torch.int64).reshape(-1, 2)
        n, r = len(shapes), self.resize
        if self.crop_mode == "squash":
            resized = torch.full((n, 2), r, dtype=torch.int64)
        else:   # shorter side to r, the longer one int(r * long / short) (torchvision truncates)
            short = shapes.min(1, keepdim=True).values
            resized = torch.where(shapes == short, torch.full_like(shapes, r),
                                  (r * shapes.double() / short.double()).long())
            resized = torch.where(shapes[:, :1] == shapes[:, 1:], torch.full_like(shapes, r), resized)
        # CenterCrop: int(round((resized - size) / 2)), half to even like Python's round
        first = ((resized - self.size).double() / 2).round().long()
        return Plan(torch.zeros((n, 2), dtype=torch.int64), shapes, resized, first,
                    torch.zeros(n, dtype=torch.bool), (self.size, self.size))

    def __call__(self, images: Images) -> torch.Tensor:
        return self._run(images, self.plan(images.shapes), self.interpolation)


@dataclass(frozen=True)
class InputTransforms:
    """A model's two input transforms: the run's training crop and the model's eval transform."""

    train: TrainTransform
    eval: EvalTransform
