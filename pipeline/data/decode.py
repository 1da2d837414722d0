"""Decode every image of a manifest once into the prepared uint8 shards.

Each image is opened with PIL, converted to RGB, center-cropped to a square and
resized to ``image_size`` (JPEGs are decoded at a reduced DCT scale first when
they are much larger, which is most of the cost saved). Threads do the work:
PIL releases the GIL while decoding and resampling. An unreadable image stops the
stage with its path; a listed image that is absent names the file.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.sources.base import CorruptImageError, Manifest
from pipeline.io import progress

log = logging.getLogger(__name__)

CHUNK = 256  # images per thread task: large enough to amortise scheduling, small for a smooth progress bar


def decode_image(open_image: Callable[[str], Image.Image], source: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the largest centered square of the image, resized bilinearly."""
    try:
        with open_image(source) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            rgb = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise FileNotFoundError(f"image listed in the dataset's metadata is missing: {source} "
                                "(incomplete copy of the dataset?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot decode image {source}: {e}") from None
    return np.asarray(rgb, dtype=np.uint8)


def decode_into(out: np.ndarray, sources: Sequence[str], open_image: Callable[[str], Image.Image], size: int,
                threads: int, desc: str = "decode") -> None:
    """Fill ``out[i]`` with image ``sources[i]`` (in order), ``threads`` at a time."""
    def work(start: int) -> int:
        for i in range(start, min(start + CHUNK, len(sources))):
            out[i] = decode_image(open_image, sources[i], size)
        return min(CHUNK, len(sources) - start)

    starts = range(0, len(sources), CHUNK)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            progress(None, total=len(sources), desc=desc, unit="img") as bar:
        for done in pool.map(work, starts):
            bar.update(done)


def manifest_filler(manifest: Manifest, size: int, threads: int | None = None):
    """``fill(split, out)`` for :func:`pipeline.data.shards.write_streaming`: decode that split's images."""
    threads = threads or int(os.environ.get("PIPELINE_THREADS", 0) or os.cpu_count() or 1)

    def fill(split: str, out: np.ndarray) -> None:
        sources = manifest.records.loc[manifest.records["split"] == split, "source"].astype(str).tolist()
        decode_into(out, sources, manifest.open_image, size, threads, desc=f"decode {split}")

    return fill
