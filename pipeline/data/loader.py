"""Background prefetching of uint8 batches from a memory-mapped shard onto the device.

One thread gathers each batch's rows of the ``[N, H, W, C]`` uint8 shard (and
their labels) ahead of the consumer, so reading the memory map overlaps the
training or inference step. A single thread is enough: ``np.take`` into a
preallocated buffer copies about 170,000 images/s at 224 px on one core of the
2-core dev machine (``bench/data_loading.py``), the target being 10,000.

* **CUDA target:** the rows land in a ring of reused **pinned** buffers; the same
  thread copies each one to the device with ``non_blocking=True`` on its own
  copy stream and records a CUDA event. The consumer's stream waits on that
  event on the GPU (``wait_event``, no host sync) and the batch is marked as used
  by it (``record_stream``) for the caching allocator. A pinned buffer is
  overwritten only after its copy's event has completed (the worker thread, not
  the consumer, waits for it).
* **CPU target:** the rows are gathered straight into the tensors the consumer
  gets; no second copy, no pinning (pointless without a device to DMA to). The
  consumer's thread allocates those buffers ahead (one per batch it takes): memory
  the worker thread allocated would come from glibc's per-thread arena, which hands
  freed heaps back to the kernel, so every batch would page-fault its memory in
  again (19 MB at 224 px, batch 128: 2-5x slower); the main arena keeps freed
  buffers for reuse (``compat.keep_buffers_on_heap``).

Every yielded tensor is the consumer's to keep; none is overwritten later. The
consumer's per-batch path never syncs the device. A prefetcher runs once over
its batches; leaving the loop early (``break``, an exception, preemption) stops
and joins the thread, as does ``close()`` or leaving a ``with`` block. An
exception in the thread is raised in the consumer at the batch it concerns.
"""
from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

IndexBatch = np.ndarray | slice | Sequence[int]
_POLL_S = 0.1   # how often a blocked thread looks at the stop flag


class Batch(NamedTuple):
    images: torch.Tensor          # uint8 [n, H, W, C] on the device
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


def _take(src: np.ndarray, rows: np.ndarray | slice, out: np.ndarray) -> None:
    if isinstance(rows, slice):
        np.copyto(out, src[rows])
    else:   # mode="clip": unbuffered, straight into ``out`` (mode="raise" copies through a temporary)
        np.take(src, rows, axis=0, out=out, mode="clip")


class _Slot:
    """A reused pinned host buffer and the event of the last copy out of it."""

    def __init__(self) -> None:
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None

    def take(self, n: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copied is not None:
            self.copied.synchronize()   # blocks this thread only, until the DMA has read the buffer
        if self.images is None or len(self.images) < n:
            self.images = torch.empty((n, *shape), dtype=torch.uint8, pin_memory=True)
            self.labels = torch.empty(n, dtype=torch.int64, pin_memory=True)
        return self.images[:n], self.labels[:n]


class _Worker:
    """The thread's side. Holds no reference to the :class:`Prefetcher`, so dropping that stops this."""

    def __init__(self, images: np.ndarray, batches: Iterable[IndexBatch], labels: np.ndarray | None,
                 device: torch.device, depth: int) -> None:
        self.images, self.batches, self.labels, self.device = images, batches, labels, device
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if cuda else None
        # depth queued + one being filled + one the consumer holds: a slot's copy is long done when it comes round.
        self.slots = [_Slot() for _ in range(depth + 2)] if cuda else []
        self.free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()   # CPU: empty buffers for the worker
        self.thread = threading.Thread(target=self.run, name="prefetch", daemon=True)

    def run(self) -> None:
        try:
            if self.stream is not None:
                with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                    self.fill()
            else:
                self.fill()
            self.put(None)   # the end
        except BaseException as e:   # handed to the consumer, raised there
            self.put(e)

    def fill(self) -> None:
        n, shape = len(self.images), tuple(self.images.shape[1:])
        for k, index in enumerate(self.batches):
            if self.stop.is_set():
                return
            rows = _rows(index, n)
            m = len(range(n)[rows]) if isinstance(rows, slice) else len(rows)
            slot = self.slots[k % len(self.slots)] if self.slots else None
            if slot is not None:
                images, labels = slot.take(m, shape)
            else:   # straight into the consumer's tensors
                images, labels = self.host_buffer(m, shape), torch.empty(m, dtype=torch.int64)
            _take(self.images, rows, images.numpy())
            if self.labels is not None:
                _take(self.labels, rows, labels.numpy())
            else:
                labels = None
            copied = None
            if slot is not None:   # on the copy stream (set in run): overlaps the consumer's kernels
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True) if labels is not None else None
                copied = slot.copied = torch.cuda.Event()
                copied.record(self.stream)
            if not self.put((Batch(images, labels, rows), copied)):
                return

    def host_buffer(self, m: int, shape: tuple[int, ...]) -> torch.Tensor:
        """CPU: the first ``m`` rows of a buffer the consumer allocated, or a new one if none fits."""
        try:
            buffer = self.free.get_nowait()
        except queue.Empty:
            buffer = None
        if buffer is None or len(buffer) < m:
            buffer = torch.empty((m, *shape), dtype=torch.uint8)
        return buffer[:m]

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


class Prefetcher:
    """Iterate over ``Batch(images, labels, index)`` of a uint8 shard, gathered ahead in a background thread.

    ``images``: uint8 ``[N, H, W, C]`` (a memory map); ``batches``: index arrays
    (e.g. :func:`shuffled_batches`) or slices (:func:`sequential_batches`), read
    lazily by the thread, so they must not draw from the run's generator;
    ``labels``: ``[N]`` integers or None; ``depth``: batches ready ahead (2-3).
    """

    def __init__(self, images: np.ndarray, batches: Iterable[IndexBatch], labels: np.ndarray | None = None, *,
                 device: torch.device | str = "cpu", depth: int = 2) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"prefetching to {device} is not supported (cpu or cuda)")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N,H,W,C] images, got {images.dtype} {images.shape}")
        labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.device = device
        self._worker = _Worker(images, batches, labels, device, depth)
        self._started = False
        weakref.finalize(self, self._worker.shutdown)

    def __iter__(self) -> Iterator[Batch]:
        """Start gathering now (not at the first ``next``) and return the batch iterator; once only."""
        if self._started:
            raise RuntimeError("a Prefetcher runs over its batches once; make a new one")
        self._started = True
        worker = self._worker
        if self.device.type == "cpu" and isinstance(worker.batches, Sequence) and len(worker.batches):
            n = len(worker.images)
            rows = max(len(range(n)[b]) if isinstance(b, slice) else len(b) for b in worker.batches)
            for _ in range(worker.queue.maxsize + 1):   # those it gathers before the consumer takes one
                worker.free.put(torch.empty((rows, *worker.images.shape[1:]), dtype=torch.uint8))
        worker.thread.start()
        return self._batches()

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
                if not cuda:   # a buffer for a later batch, from this thread's arena (see the module doc)
                    worker.free.put(torch.empty_like(batch.images._base if batch.images._base is not None
                                                     else batch.images))
                else:   # GPU-side ordering only: no host sync
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(copied)
                    batch.images.record_stream(stream)
                    if batch.labels is not None:
                        batch.labels.record_stream(stream)
                yield batch
        finally:   # exhausted, break (generator closed), consumer exception, error in the thread
            worker.shutdown()

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes at most the batch it is gathering)."""
        self._worker.shutdown()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
