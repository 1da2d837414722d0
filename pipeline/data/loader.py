"""Background loading of batches of stored images onto the device: read, decode, pad, copy.

One thread per :class:`Prefetcher` walks the batches ahead of the consumer. For each batch it
reads the records from the memory-mapped shard (:class:`pipeline.data.shards.ImageStore`), decodes
them in a small thread pool (JPEG: libjpeg-turbo through torchvision or Pillow, which release the
GIL; raw: a copy), runs the optional per-image CPU hook, and writes every image into one padded uint8
batch (:class:`~pipeline.data.resample.Images`; portrait images transposed, so that the padding stays
small). Raw shards of one image size skip the pool: one ``np.take`` gathers the whole batch.

* **CUDA target:** the batch lands in a ring of reused **pinned** buffers; the same thread copies
  it to the device with ``non_blocking=True`` on its own copy stream and records a CUDA event. The
  consumer's stream waits on that event on the GPU (``wait_event``, no host sync) and the batch is
  marked as used by it (``record_stream``) for the caching allocator. A pinned buffer is overwritten
  only after its copy's event has completed (the worker thread, not the consumer, waits for it).
  With ``PIPELINE_JPEG_DECODER=nvjpeg`` the JPEGs are decoded on the GPU instead, as one batch
  (``torchvision.io.decode_jpeg(device="cuda")``), on the same copy stream.
* **CPU target:** the batch is written straight into the tensors the consumer gets; no second copy,
  no pinning. The consumer's thread allocates those buffers ahead (one per batch it takes): memory
  the worker thread allocated would come from glibc's per-thread arena, which hands freed heaps back
  to the kernel, so every batch would page-fault its memory in again (2-5x slower); the main arena
  keeps freed buffers for reuse (``compat.keep_buffers_on_heap``).

**Per-image CPU hook** (``image_hook(image, row) -> image``): runs in the decode threads on each
decoded ``[h, w, 3]`` uint8 image (``row``: its row in the shard), before padding: the place for a
per-image PIL/numpy augmentation such as timm's RandAugment. It must keep the image's size (the crops
are drawn from the stored sizes) and draw its randomness from ``row`` and a seed it was built with
(it runs ahead of the consumer, in several threads).

Every yielded tensor is the consumer's to keep; none is overwritten later. The consumer's per-batch
path never syncs the device. A prefetcher runs once over its batches; leaving the loop early
(``break``, an exception, preemption) stops and joins the thread, as does ``close()`` or leaving a
``with`` block. An exception in the thread is raised in the consumer at the batch it concerns.
"""
from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from pipeline.data.images import jpeg_decoder
from pipeline.data.resample import Images
from pipeline.data.shards import ImageStore

IndexBatch = np.ndarray | slice | Sequence[int]
ImageHook = Callable[[np.ndarray, int], np.ndarray]
_POLL_S = 0.1   # how often a blocked thread looks at the stop flag


class Batch(NamedTuple):
    images: Images                # uint8, padded, on the device
    labels: torch.Tensor | None   # int64 [n] on the device (None without labels)
    index: np.ndarray | slice     # the shard rows, in batch order


def shuffled_batches(order: torch.Tensor, batch_size: int, steps: int, start: int = 0) -> list[np.ndarray]:
    """Steps ``start..steps-1`` of an epoch's ``order``, each batch's indices sorted (fast memory-map reads).

    The training loop's batches, ragged last batch dropped by ``steps = n // batch_size``.
    """
    return [np.sort(order[i * batch_size:(i + 1) * batch_size].numpy()) for i in range(start, steps)]


def sequential_batches(n: int, batch_size: int) -> list[slice]:
    """Every row in order, the last batch partial: inference over a split."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _rows(index: IndexBatch, n: int) -> np.ndarray | slice:
    """A contiguous slice or checked int64 indices (``np.take`` below clips instead of raising)."""
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        return slice(start, stop) if step == 1 else np.arange(start, stop, step)
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"batch indices outside [0, {n}): min {idx.min()}, max {idx.max()}")
    return idx


def layout(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(sizes in the padded batch, transposed, (rows, columns) of the padding) of images of ``sizes`` [m, 2]."""
    transposed = sizes[:, 0] > sizes[:, 1]
    stored = np.where(transposed[:, None], sizes[:, ::-1], sizes)
    pad = tuple(int(v) for v in stored.max(0)) if len(sizes) else (1, 1)
    return stored, transposed, pad


class _Slot:
    """A reused pinned host buffer and the event of the last copy out of it."""

    def __init__(self) -> None:
        self.bytes: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None

    def take(self, nbytes: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copied is not None:
            self.copied.synchronize()   # blocks this thread only, until the DMA has read the buffer
        if self.bytes is None or len(self.bytes) < nbytes:
            self.bytes = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        if self.labels is None or len(self.labels) < n:
            self.labels = torch.empty(n, dtype=torch.int64, pin_memory=True)
        return self.bytes[:nbytes], self.labels[:n]


class _Worker:
    """The thread's side. Holds no reference to the :class:`Prefetcher`, so dropping that stops this."""

    def __init__(self, store: ImageStore, batches: Iterable[IndexBatch], labels: np.ndarray | None,
                 device: torch.device, depth: int, threads: int, hook: ImageHook | None, decoder: str) -> None:
        self.store, self.batches, self.labels, self.device = store, batches, labels, device
        self.hook, self.decoder = hook, decoder
        self.sizes = store.sizes
        self.uniform = bool(store.encoding == "raw" and hook is None and len(store)
                            and (self.sizes == self.sizes[0]).all())
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if cuda else None
        # depth queued + one being filled + one the consumer holds: a slot's copy is long done when it comes round.
        self.slots = [_Slot() for _ in range(depth + 2)] if cuda else []
        self.free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()   # CPU: empty buffers for the worker
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self.thread = threading.Thread(target=self.run, name="prefetch", daemon=True)

    def run(self) -> None:
        try:
            if not self.uniform and self.decoder != "nvjpeg":
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            if self.stream is not None:
                with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                    self.fill()
            else:
                self.fill()
            self.put(None)   # the end
        except BaseException as e:   # handed to the consumer, raised there
            self.put(e)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)

    def fill(self) -> None:
        n = len(self.store)
        for k, index in enumerate(self.batches):
            if self.stop.is_set():
                return
            rows = _rows(index, n)
            ids = np.arange(n)[rows] if isinstance(rows, slice) else rows
            if self.uniform:   # one size: gathered as is, never transposed
                stored, transposed, (hp, wp) = self.sizes[ids], np.zeros(len(ids), bool), tuple(self.sizes[0])
            else:
                stored, transposed, (hp, wp) = layout(self.sizes[ids])
            m, nbytes = len(ids), len(ids) * hp * wp * 3
            slot = self.slots[k % len(self.slots)] if self.slots else None
            if slot is not None:
                flat, labels = slot.take(nbytes, m)
            else:   # straight into the consumer's tensors
                flat, labels = self.host_buffer(nbytes), torch.empty(m, dtype=torch.int64)
            if self.decoder == "nvjpeg":
                data = self.nvjpeg(ids, stored, transposed, (hp, wp))
            else:
                data = flat.view(m, hp, wp, 3)
                self.decode_into(data.numpy(), rows, ids, stored, transposed)
            if self.labels is not None:
                np.take(self.labels, ids, out=labels.numpy())
            else:
                labels = None
            copied = None
            if slot is not None:   # on the copy stream (set in run): overlaps the consumer's kernels
                data = data.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True) if labels is not None else None
                copied = slot.copied = torch.cuda.Event()
                copied.record(self.stream)
            images = Images(data, torch.from_numpy(stored.astype(np.int64)), torch.from_numpy(transposed))
            if not self.put((Batch(images, labels, rows), copied)):
                return

    def decode_into(self, out: np.ndarray, rows: np.ndarray | slice, ids: np.ndarray, stored: np.ndarray,
                    transposed: np.ndarray) -> None:
        """Decode the batch's images into ``out`` (padded), in the pool (one ``np.take`` for uniform raw shards)."""
        if self.uniform:
            h, w = (int(v) for v in self.sizes[0])
            src = self.store.data[:len(self.store) * h * w * 3].reshape(-1, h, w, 3)
            if isinstance(rows, slice):
                np.copyto(out, src[rows])
            else:   # mode="clip": unbuffered, straight into ``out`` (mode="raise" copies through a temporary)
                np.take(src, rows, axis=0, out=out, mode="clip")
            return

        def work(part: range) -> None:
            for j in part:
                row = int(ids[j])
                image = self.store.decode(row, self.decoder)
                if self.hook is not None:
                    image = self.hook(image, row)
                    if image.shape[:2] != tuple(self.sizes[row]):
                        raise ValueError(f"image_hook changed image {row} from {tuple(self.sizes[row])} to "
                                         f"{image.shape[:2]}: it must keep the size")
                h, w = stored[j]
                np.copyto(out[j, :h, :w], image.transpose(1, 0, 2) if transposed[j] else image)

        m = len(ids)
        step = max(1, -(-m // self.threads))
        for f in [self.pool.submit(work, range(a, min(m, a + step))) for a in range(0, m, step)]:
            f.result()

    def nvjpeg(self, ids: np.ndarray, stored: np.ndarray, transposed: np.ndarray,
               pad: tuple[int, int]) -> torch.Tensor:
        """The batch decoded on the GPU by nvJPEG (one call), padded on the device (copy stream)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        records = [torch.from_numpy(np.array(self.store.record(int(i)))) for i in ids]
        decoded = decode_jpeg(records, mode=ImageReadMode.RGB, device=self.device)
        data = torch.empty((len(ids), *pad, 3), dtype=torch.uint8, device=self.device)
        for j, image in enumerate(decoded):
            h, w = (int(v) for v in stored[j])
            hwc = image.permute(1, 2, 0)
            data[j, :h, :w] = hwc.transpose(0, 1) if transposed[j] else hwc
        return data

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """CPU: the first ``nbytes`` of a buffer the consumer allocated, or a new one if none fits."""
        try:
            buffer = self.free.get_nowait()
        except queue.Empty:
            buffer = None
        if buffer is None or len(buffer) < nbytes:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
        return buffer[:nbytes]

    def put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("prefetch thread ended without a result") from None

    def shutdown(self) -> None:
        """Stop and join the thread; drop what it had queued. Idempotent."""
        self.stop.set()
        while True:   # free a put blocked on a full queue at once, and the queued batches
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()
        while not self.queue.empty():   # a batch it put while stopping
            self.queue.get_nowait()


def default_threads() -> int:
    """Decode threads: the job's share of cores (``PIPELINE_THREADS``), else every core."""
    return max(1, int(os.environ.get("PIPELINE_THREADS", 0) or os.cpu_count() or 1))


class Prefetcher:
    """Iterate over ``Batch(images, labels, index)`` of stored images, loaded ahead in a background thread.

    ``images``: an :class:`ImageStore` (or uint8 ``[N, H, W, 3]`` pixels); ``batches``: index arrays
    (e.g. :func:`shuffled_batches`) or slices (:func:`sequential_batches`), read lazily by the thread, so
    they must not draw from the run's generator; ``labels``: ``[N]`` integers or None; ``depth``: batches
    ready ahead (2-3); ``threads``: decode threads (default :func:`default_threads`); ``image_hook``: the
    per-image CPU augmentation (module doc); ``decoder``: the JPEG decoder (default
    :func:`pipeline.data.images.jpeg_decoder`).
    """

    def __init__(self, images: ImageStore | np.ndarray, batches: Iterable[IndexBatch],
                 labels: np.ndarray | None = None, *, device: torch.device | str = "cpu", depth: int = 2,
                 threads: int | None = None, image_hook: ImageHook | None = None, decoder: str | None = None) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"prefetching to {device} is not supported (cpu or cuda)")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        store = images if isinstance(images, ImageStore) else ImageStore.from_array(images)
        decoder = decoder or (jpeg_decoder() if store.encoding == "jpeg" else "pil")
        if decoder == "nvjpeg" and (device.type != "cuda" or image_hook is not None or store.encoding != "jpeg"):
            raise ValueError("nvjpeg decodes JPEG shards onto a CUDA device, without a per-image CPU hook")
        labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.device = device
        self._worker = _Worker(store, batches, labels, device, depth, threads or default_threads(), image_hook,
                               decoder)
        self._started = False
        weakref.finalize(self, self._worker.shutdown)

    def __iter__(self) -> Iterator[Batch]:
        """Start loading now (not at the first ``next``) and return the batch iterator; once only."""
        if self._started:
            raise RuntimeError("a Prefetcher runs over its batches once; make a new one")
        self._started = True
        worker = self._worker
        if self.device.type == "cpu" and isinstance(worker.batches, Sequence) and len(worker.batches):
            need = max(self._bytes(b) for b in worker.batches)
            for _ in range(worker.queue.maxsize + 1):   # those it fills before the consumer takes one
                worker.free.put(torch.empty(need, dtype=torch.uint8))
        worker.thread.start()
        return self._batches()

    def _bytes(self, index: IndexBatch) -> int:
        n = len(self._worker.store)
        try:
            rows = _rows(index, n)
        except IndexError:   # raised by the thread, at the batch it concerns
            return 0
        _, _, (hp, wp) = layout(self._worker.sizes[rows])
        return (len(range(n)[rows]) if isinstance(rows, slice) else len(rows)) * hp * wp * 3

    def _batches(self) -> Iterator[Batch]:
        worker, cuda = self._worker, self.device.type == "cuda"
        try:
            while True:
                item = worker.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, copied = item
                data = batch.images.data
                if not cuda:   # a buffer for a later batch, from this thread's arena (see the module doc)
                    worker.free.put(torch.empty_like(data._base if data._base is not None else data))
                else:   # GPU-side ordering only: no host sync
                    stream = torch.cuda.current_stream(self.device)
                    if copied is not None:
                        stream.wait_event(copied)
                    data.record_stream(stream)
                    if batch.labels is not None:
                        batch.labels.record_stream(stream)
                yield batch
        finally:   # exhausted, break (generator closed), consumer exception, error in the thread
            worker.shutdown()

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes at most the batch it is filling)."""
        self._worker.shutdown()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
