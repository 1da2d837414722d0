"""One image as prepared data stores it: aspect kept, shorter side at most ``storage_size``, JPEG or raw.

Encoding happens once, in ``prepare_data`` (:mod:`pipeline.data.decode`); decoding every time a batch
is read (:mod:`pipeline.data.loader`), so it is kept cheap:

* **raw**: the ``[h, w, 3]`` uint8 pixels, row-major; decoding is a view of the memory map.
* **jpeg**: baseline JPEG at ``jpeg_quality`` (4:2:0 chroma, libjpeg-turbo through Pillow);
  decoded on the CPU in the loader's threads by ``torchvision.io.decode_jpeg`` where its extension
  loads (CUDA builds), else by simplejpeg (or Pillow): all libjpeg-turbo, integer IDCT, the same
  pixels. nvJPEG on the GPU is an option (``PIPELINE_JPEG_DECODER=nvjpeg``: not the same pixels).

On this project's CPU torch, torchvision's image extension is a CUDA build and does not load, so
simplejpeg decodes there (:func:`jpeg_decoder`).
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

ENCODINGS = ("jpeg", "raw")
DECODERS = ("auto", "simplejpeg", "pil", "torchvision", "nvjpeg")
# Resampling of the one-off storage resize (antialiased); every later resize is the model's own.
STORAGE_FILTER = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Storage:
    """How a dataset's images are stored: shorter side at most ``size``, ``encoding``, JPEG ``quality``."""

    size: int
    encoding: str = "jpeg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding {self.encoding!r} is not one of {', '.join(ENCODINGS)}")


def storage_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of an image stored with its shorter side at most ``size``, aspect ratio kept (rounded)."""
    short = min(height, width)
    if short <= size:
        return height, width
    scale = size / short
    return (size, max(1, round(width * scale))) if height == short else (max(1, round(height * scale)), size)


def fit(img: Image.Image, size: int) -> Image.Image:
    """``img`` as RGB with its shorter side at most ``size`` (JPEGs decode at a reduced DCT scale first)."""
    w, h = img.size
    th, tw = storage_shape(h, w, size)
    if img.format == "JPEG" and (th, tw) != (h, w):
        img.draft("RGB", (tw, th))   # a 1/2, 1/4 or 1/8 scale that stays at least as large: most of the cost saved
    rgb = img.convert("RGB")
    return rgb if rgb.size == (tw, th) else rgb.resize((tw, th), STORAGE_FILTER)


def encode(rgb: Image.Image | np.ndarray, storage: Storage) -> tuple[bytes, int, int]:
    """(record, h, w) of an RGB image (already fitted): its JPEG bytes or its raw pixels."""
    if storage.encoding == "raw":
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an RGB image [h, w, 3], got {pixels.shape}")
        return pixels.tobytes(), pixels.shape[0], pixels.shape[1]
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=storage.quality, subsampling="4:2:0", optimize=False, progressive=False)
    return buf.getvalue(), img.size[1], img.size[0]


def decode_pil(record: memoryview | bytes) -> np.ndarray:
    """uint8 [h, w, 3] of a JPEG record, with Pillow (libjpeg-turbo; releases the GIL while decoding)."""
    with Image.open(io.BytesIO(record)) as img:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img)


def decode_simplejpeg(record: memoryview | bytes) -> np.ndarray:
    """uint8 [h, w, 3] of a JPEG record, with simplejpeg (libjpeg-turbo straight into numpy, without Pillow's
    image object and copies: about 1.4x faster; releases the GIL; the same pixels)."""
    import simplejpeg

    return simplejpeg.decode_jpeg(record, colorspace="RGB")


def decode_torchvision(record: memoryview | bytes) -> np.ndarray:
    """uint8 [h, w, 3] of a JPEG record, with ``torchvision.io.decode_jpeg`` on the CPU (libjpeg-turbo)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(record), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


@functools.cache
def torchvision_decodes() -> bool:
    """``torchvision.io.decode_jpeg`` works here (its extension loads: not on this project's CPU torch)."""
    from pipeline import compat

    compat.apply()
    probe, _, _ = encode(np.zeros((8, 8, 3), np.uint8), Storage(8))
    try:
        return decode_torchvision(probe).shape == (8, 8, 3)
    except (RuntimeError, ImportError, OSError):
        return False


def jpeg_decoder() -> str:
    """The JPEG decoder of this process: ``PIPELINE_JPEG_DECODER`` (auto, simplejpeg, pil, torchvision, nvjpeg).

    ``auto``: torchvision where its extension loads, else simplejpeg; all three CPU decoders are
    libjpeg-turbo with the integer IDCT and fancy upsampling: the same pixels. ``nvjpeg`` decodes
    batches on the GPU (CUDA targets only; not the same pixels).
    """
    name = os.environ.get("PIPELINE_JPEG_DECODER", "auto") or "auto"
    if name not in DECODERS:
        raise ValueError(f"PIPELINE_JPEG_DECODER={name!r} is not one of {', '.join(DECODERS)}")
    if name == "auto":
        return "torchvision" if torchvision_decodes() else "simplejpeg"
    if name in ("torchvision", "nvjpeg") and not torchvision_decodes():
        raise RuntimeError(f"PIPELINE_JPEG_DECODER={name}: torchvision's image extension does not load here "
                           "(a CPU torch with the CUDA torchvision wheel); use pil or auto")
    return name


def decode(record: memoryview | bytes, height: int, width: int, encoding: str, decoder: str = "pil") -> np.ndarray:
    """uint8 [height, width, 3] of one stored record (a view of ``record`` for raw pixels)."""
    if encoding == "raw":
        return np.frombuffer(record, dtype=np.uint8).reshape(height, width, 3)
    pixels = (decode_simplejpeg(record) if decoder == "simplejpeg" else
              decode_torchvision(record) if decoder == "torchvision" else decode_pil(record))
    if pixels.shape != (height, width, 3):
        raise ValueError(f"decoded {pixels.shape}, the index says ({height}, {width}, 3)")
    return pixels
