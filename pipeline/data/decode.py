"""Decode every image of a manifest once and store it in the prepared shards.

Each image is opened with PIL, converted to RGB, resized (aspect kept) so that its shorter side is at
most ``storage_size`` (JPEGs are decoded at a reduced DCT scale first when they are much larger, which
is most of the cost saved) and encoded as the dataset's storage says (:mod:`pipeline.data.images`).
Threads do the work (PIL releases the GIL while decoding, resampling and encoding); the records are
written in manifest order, so the same inputs give the same bytes. An unreadable image stops the stage
with its path; a listed image that is absent names the file.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from PIL import Image, UnidentifiedImageError

from pipeline.data.images import Storage, encode, fit
from pipeline.data.shards import SplitWriter
from pipeline.data.sources.base import CorruptImageError, Manifest
from pipeline.io import progress

log = logging.getLogger(__name__)

CHUNK = 64   # images per thread task: amortises scheduling, keeps a few chunks of records in memory
Record = tuple[bytes, int, int]


def store_image(open_image: Callable[[str], Image.Image], source: str, storage: Storage) -> Record:
    """(record, h, w) of one image: fitted to the storage size and encoded."""
    try:
        with open_image(source) as img:
            rgb = fit(img, storage.size)
    except FileNotFoundError:
        raise FileNotFoundError(f"image listed in the dataset's metadata is missing: {source} "
                                "(incomplete copy of the dataset?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot decode image {source}: {e}") from None
    return encode(rgb, storage)


def store_into(writer: SplitWriter, sources: Sequence[str], open_image: Callable[[str], Image.Image],
               storage: Storage, threads: int, desc: str = "decode") -> None:
    """Add image ``sources[i]`` to ``writer`` in order, ``threads`` at a time (a bounded window of chunks)."""
    def work(start: int) -> list[Record]:
        return [store_image(open_image, sources[i], storage) for i in range(start, min(start + CHUNK, len(sources)))]

    starts = iter(range(0, len(sources), CHUNK))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            progress(None, total=len(sources), desc=desc, unit="img") as bar:
        window = deque(pool.submit(work, s) for s in islice(starts, 2 * max(1, threads)))
        while window:
            records = window.popleft().result()
            for start in starts:   # one new chunk for the one taken
                window.append(pool.submit(work, start))
                break
            for record in records:
                writer.add(*record)
            bar.update(len(records))


def manifest_filler(manifest: Manifest, storage: Storage, threads: int | None = None):
    """``fill(split, writer)`` for :func:`pipeline.data.shards.write_streaming`: store that split's images."""
    threads = threads or int(os.environ.get("PIPELINE_THREADS", 0) or os.cpu_count() or 1)

    def fill(split: str, writer: SplitWriter) -> None:
        sources = manifest.records.loc[manifest.records["split"] == split, "source"].astype(str).tolist()
        store_into(writer, sources, manifest.open_image, storage, threads, desc=f"decode {split}")

    return fill
