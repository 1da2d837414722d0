"""Antialiased resizes of crops of a batch of images of several sizes, in pure torch, on the batch's device.

Every image transform of the pipeline (the training crop and the model's eval transform,
:mod:`pipeline.data.augment`) is one :class:`Plan`: per image and axis, the source range
``[lo, hi)`` is resized to ``resized`` samples, of which ``size`` are kept from ``first``, and
the columns may be mirrored. torchvision's ``resized_crop`` is ``lo..hi`` = the box,
``resized`` = the output size, ``first`` = 0; ``Resize`` + ``CenterCrop`` is ``lo..hi`` = the whole
image, ``resized`` = the resized size and ``first`` = the crop's offset.

The resize is torch's antialiased bilinear or bicubic (``F.interpolate(antialias=True)``: PIL's
filters, bicubic with a = -0.5, widened by the downscale factor), computed by one of two executors:

* ``loop`` (CPU default): per image, torch's uint8 channels-last kernel, the one torchvision's
  ``resize`` runs on uint8 tensors (AVX2; an eighth of a millisecond for a 224-px crop);
* ``matmul`` (CUDA default): the whole batch as two batched matrix products ``Wy @ X @ Wx^T`` whose
  rows are the filters' weights (built on the CPU, vectorised over the batch), in full fp32.

Both round to integers and clamp to [0, 255], as the uint8 kernels do, so the two agree to a grey
level and a run's inputs are the same on any device. A plan that keeps every image whole at its own
size resamples nothing (exact). Nothing here reads a device tensor back.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic")
Method = Literal["auto", "loop", "matmul"]
_TAPS = {"bilinear": 2, "bicubic": 4}   # torch's interp_size: filter support 1 and 2 before widening
_BICUBIC_A = -0.5                       # torch's and PIL's antialiased bicubic
_CHUNK_BYTES = 1 << 28                  # float32 input of one matmul chunk (bounds device memory)


class Images(NamedTuple):
    """A batch of images of several sizes, padded into one uint8 tensor on the device.

    Image ``i`` is ``data[i, :h, :w]`` with ``(h, w) = sizes[i]``; where ``transposed[i]`` it lies
    transposed (rows = its columns): portrait images are stored landscape, so that the padding to the
    batch's largest size stays small. ``sizes`` and ``transposed`` are CPU tensors (no device sync).
    """

    data: torch.Tensor        # uint8 [n, H, W, 3]
    sizes: torch.Tensor       # int64 [n, 2]: (rows, columns) in ``data``
    transposed: torch.Tensor  # bool [n]

    @classmethod
    def stack(cls, images: torch.Tensor) -> Images:
        """Images of one size: a uint8 ``[n, H, W, 3]`` tensor as is."""
        n, h, w = images.shape[:3]
        return cls(images, torch.tensor([[h, w]] * n, dtype=torch.int64).reshape(n, 2),
                   torch.zeros(n, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def shapes(self) -> torch.Tensor:
        """int64 [n, 2]: (height, width) of every image."""
        return torch.where(self.transposed[:, None], self.sizes.flip(1), self.sizes)

    def part(self, index: slice) -> Images:
        """Some of the images (a micro-batch); the padding stays the batch's."""
        return Images(self.data[index], self.sizes[index], self.transposed[index])

    def image(self, i: int) -> torch.Tensor:
        """uint8 [height, width, 3] view of image ``i``."""
        h, w = (int(v) for v in self.sizes[i])
        view = self.data[i, :h, :w]
        return view.transpose(0, 1) if bool(self.transposed[i]) else view


@dataclass(frozen=True)
class Plan:
    """Per image and axis (rows, columns) of the original images: what is resized and kept."""

    lo: torch.Tensor        # int64 [n, 2]: first source row / column of the range
    hi: torch.Tensor        # int64 [n, 2]: end of the range
    resized: torch.Tensor   # int64 [n, 2]: the range resized to this many samples
    first: torch.Tensor     # int64 [n, 2]: first kept sample
    flip: torch.Tensor      # bool [n]: mirror the kept columns
    size: tuple[int, int]   # (rows, columns) kept

    def __len__(self) -> int:
        return len(self.lo)


def _filter(x: torch.Tensor, mode: str) -> torch.Tensor:
    x = x.abs()
    if mode == "bilinear":
        return (1 - x).clamp_min(0)
    a = _BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def axis_weights(lo: torch.Tensor, hi: torch.Tensor, resized: torch.Tensor, first: torch.Tensor, out: int,
                 length: int, mode: str) -> torch.Tensor:
    """float32 [n, out, length]: row j holds the weights of kept sample j over the source positions.

    torch's ``_compute_weights_aa``: centre ``scale * (j + 0.5)`` with ``scale = range / resized``,
    taps from ``int(centre - support + 0.5)`` to ``int(centre + support + 0.5)`` clipped to the range,
    weights ``filter((k - centre + 0.5) / max(scale, 1))`` normalised to sum 1.
    """
    extent = (hi - lo).double()
    scale = extent / resized.double()
    support = _TAPS[mode] * 0.5 * scale.clamp_min(1.0)
    inv = 1.0 / scale.clamp_min(1.0)
    j = first.double()[:, None] + torch.arange(out, dtype=torch.float64)
    center = scale[:, None] * (j + 0.5)
    xmin = (center - support[:, None] + 0.5).trunc().clamp_min(0)
    xmax = torch.minimum((center + support[:, None] + 0.5).trunc(), extent[:, None])
    taps = int(torch.ceil(2 * support.max()).item()) + 2 if len(lo) else 1
    k = xmin[..., None] + torch.arange(taps, dtype=torch.float64)
    w = _filter((k - center[..., None] + 0.5) * inv[:, None, None], mode) * (k < xmax[..., None])
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total != 0, total, torch.ones_like(total))
    pos = (k + lo.double()[:, None, None]).clamp(0, length - 1).long()
    return torch.zeros((len(lo), out, length), dtype=torch.float64).scatter_add_(2, pos, w).float()


def resample(images: Images, plan: Plan, mode: str, method: Method = "auto") -> torch.Tensor:
    """The plan's crops of ``images``: [n, 3, rows, columns] pixel values (integers in [0, 255]).

    ``loop`` gives uint8 (channels-last strides), ``matmul`` float32; ``auto`` is ``matmul`` on CUDA.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation {mode!r} is not one of {', '.join(INTERPOLATIONS)}")
    if len(plan) != len(images):
        raise ValueError(f"{len(plan)} crops for {len(images)} images")
    if _identity(images, plan):   # every image kept whole at its size (e.g. the digits demo's 40 px): exact, free
        return images.data.permute(0, 3, 1, 2)
    if method == "auto":
        method = "matmul" if images.data.device.type == "cuda" else "loop"
    return _resample_matmul(images, plan, mode) if method == "matmul" else _resample_loop(images, plan, mode)


def _identity(images: Images, plan: Plan) -> bool:
    """No resampling at all: one image size, kept whole, unflipped, untransposed (CPU checks only)."""
    n, rows, cols = len(images), *plan.size
    return (tuple(images.data.shape[1:3]) == (rows, cols) and not bool(images.transposed.any())
            and not bool(plan.flip.any()) and bool((plan.lo == 0).all()) and bool((plan.first == 0).all())
            and bool((plan.hi == torch.tensor([rows, cols])).all()) and bool((plan.resized == plan.hi).all())
            and bool((images.sizes == torch.tensor([rows, cols])).all()) and n > 0)


_PIXEL = np.dtype((np.void, 3))   # one RGB pixel: numpy mirrors rows of these ~2x faster than of bytes


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """A [1, C, H, W] channels-last view whose batch stride is not ambiguous: torch then allocates the resize's
    output channels-last too (pytorch/pytorch#68430; torchvision's resize does the same)."""
    return x.as_strided(x.shape, (x.numel(), *x.stride()[1:]))


def _resample_loop(images: Images, plan: Plan, mode: str) -> torch.Tensor:
    """Per image: crop, torch's uint8 channels-last resize, keep, mirror. On the CPU the crops, copies and flips
    are numpy's (single-threaded: tiny torch copies pay an OpenMP barrier each, ruinous on a busy machine)."""
    rows, cols = plan.size
    lo, hi, resized, first = (t.tolist() for t in (plan.lo, plan.hi, plan.resized, plan.first))
    flips = plan.flip.tolist()
    cpu = images.data.device.type == "cpu"
    out = torch.empty((len(images), rows, cols, 3), dtype=torch.uint8, device=images.data.device)
    out_np = out.numpy() if cpu else None
    for i in range(len(images)):
        (y0, x0), (y1, x1), (ry, rx), (fy, fx) = lo[i], hi[i], resized[i], first[i]
        if cpu:   # mirrored before the resize (its filters are symmetric), whole pixels at a time
            crop = np.ascontiguousarray(images.image(i).numpy()[y0:y1, x0:x1])
            if flips[i]:
                pixels = crop.view(_PIXEL).reshape(crop.shape[:2])
                crop, fx = np.ascontiguousarray(pixels[:, ::-1]).view(np.uint8).reshape(crop.shape), rx - fx - cols
            x = _channels_last(torch.from_numpy(crop).permute(2, 0, 1)[None])
        else:
            x = images.image(i)[y0:y1, x0:x1].permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        if (ry, rx) != (y1 - y0, x1 - x0):
            x = F.interpolate(x, size=(ry, rx), mode=mode, antialias=True, align_corners=False)
        if cpu:
            out_np[i] = x[0].permute(1, 2, 0).numpy()[fy:fy + rows, fx:fx + cols]
        else:
            kept = x[0, :, fy:fy + rows, fx:fx + cols]
            out[i] = (kept.flip(-1) if flips[i] else kept).permute(1, 2, 0)
    return out.permute(0, 3, 1, 2)


@contextlib.contextmanager
def _ieee_fp32():
    """Full-precision float32 matmuls inside (the training runtime turns TF32 on; its 10-bit mantissa
    would round the weights to a few tenths of a grey level). The flag is read at each call."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without a host sync: pageable host-to-CUDA copies sync the stream."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)   # the host allocator keeps the block until copied
    return t.to(device)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255)


def _resample_matmul(images: Images, plan: Plan, mode: str) -> torch.Tensor:
    n, hp, wp, _ = images.data.shape
    rows, cols = plan.size
    t = images.transposed
    if t.any() and rows != cols:
        raise ValueError(f"a batch with transposed images needs a square output, got {plan.size}")
    span = max(hp, wp)
    wy = axis_weights(plan.lo[:, 0], plan.hi[:, 0], plan.resized[:, 0], plan.first[:, 0], rows, span, mode)
    wx = axis_weights(plan.lo[:, 1], plan.hi[:, 1], plan.resized[:, 1], plan.first[:, 1], cols, span, mode)
    wx = torch.where(plan.flip[:, None, None], wx.flip(1), wx)   # a mirrored output reads its columns backwards
    # In ``data``'s orientation: a transposed image's rows are its columns.
    if t.any():   # square output: the two axes' weights have one shape
        wy, wx = torch.where(t[:, None, None], wx, wy), torch.where(t[:, None, None], wy, wx)
    left, right = wy[..., :hp], wx[..., :wp].transpose(1, 2)
    device = images.data.device
    left, right = _to_device(left, device), _to_device(right, device)
    out = torch.empty((n, 3, rows, cols), dtype=torch.float32, device=device)
    step = max(1, _CHUNK_BYTES // max(1, 12 * hp * wp))
    with _ieee_fp32():
        for transposed in (False, True):
            members = torch.nonzero(t == transposed)[:, 0]
            for a in range(0, len(members), step):
                part = _to_device(members[a:a + step], device)
                x = images.data.index_select(0, part).permute(0, 3, 1, 2).float()
                lft, rgt = left.index_select(0, part)[:, None], right.index_select(0, part)[:, None]
                # The image's horizontal pass first, rounded to integers in [0, 255] before the vertical
                # one, as torch's uint8 kernel does; a transposed image's columns are data's rows.
                if transposed:
                    y = torch.matmul(_pixels(torch.matmul(lft, x)), rgt).transpose(-1, -2)
                else:
                    y = torch.matmul(lft, _pixels(torch.matmul(x, rgt)))
                out.index_copy_(0, part, _pixels(y))
    return out
