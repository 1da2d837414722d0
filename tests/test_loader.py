"""Background prefetching of uint8 batches (pipeline.data.loader): order, contents, shutdown, errors."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.loader import Prefetcher, sequential_batches, shuffled_batches
from pipeline.data.shards import ImageStore

N = 103
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def jpeg_store(tmp: Path, n: int = N) -> ImageStore:
    """A JPEG split of real photo crops of several sizes, landscape and portrait, written by the shard writer."""
    from sklearn.datasets import load_sample_images

    from pipeline.data.images import Storage, encode
    from pipeline.data.shards import SplitWriter

    photo = load_sample_images().images[0]
    rng = np.random.default_rng(0)
    writer = SplitWriter(tmp, "train", n)
    for _ in range(n):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        top, left = int(rng.integers(0, 400 - h)), int(rng.integers(0, 600 - w))
        writer.add(*encode(photo[top:top + h, left:left + w], Storage(64)))
    writer.close()
    index = np.load(tmp / "train.index.npy")
    return ImageStore(np.memmap(tmp / "train.images", dtype=np.uint8, mode="r"), index, "jpeg")


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def shard(request, tmp_path_factory):
    """A split as the pipeline reads it, and its labels: raw uint8 [N, 6, 5, 3] (one size: gathered with
    np.take) or JPEGs of several sizes (decoded in the thread pool, padded, portrait ones transposed)."""
    tmp = tmp_path_factory.mktemp("shard")
    rng = np.random.default_rng(0)
    if request.param == "raw":
        out = np.lib.format.open_memmap(tmp / "train.npy", mode="w+", dtype=np.uint8, shape=(N, 6, 5, 3))
        out[...] = rng.integers(0, 256, out.shape, dtype=np.uint8)
        out.flush()
        del out
        return ImageStore.from_array(np.load(tmp / "train.npy", mmap_mode="r")), rng.integers(0, 10, N)
    return jpeg_store(tmp), rng.integers(0, 10, N)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def rows_of(index, n: int = N) -> np.ndarray:
    return np.arange(n)[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)


def check(batch, store: ImageStore, labels, index) -> None:
    """Every image of the batch is the stored one, whole, in batch order; the labels too."""
    rows = rows_of(index)
    images = batch.images
    assert len(images) == len(rows) and images.data.dtype == torch.uint8
    assert torch.equal(images.shapes, torch.from_numpy(store.sizes[rows]).reshape(-1, 2))
    for j, row in enumerate(rows):
        assert torch.equal(images.image(j).cpu(), torch.from_numpy(store.decode(int(row))))
    if labels is not None:
        assert torch.equal(batch.labels.cpu(), torch.from_numpy(labels[rows]))


def check_cuda(batch, store, labels, index) -> None:
    assert batch.images.data.is_cuda and batch.labels.is_cuda
    check(batch, store, labels, index)


def test_shuffled_batches_in_order(shard):
    images, labels = shard
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    batches = shuffled_batches(order, 16, steps=N // 16, start=2)
    assert len(batches) == 4 and all(np.all(np.diff(b) > 0) for b in batches)
    assert np.array_equal(batches[0], np.sort(order[32:48].numpy()))
    seen = list(Prefetcher(images, batches, labels))
    assert len(seen) == 4
    for batch, index in zip(seen, batches):
        check(batch, images, labels, index)
        assert batch.labels.dtype == torch.int64 and not batch.images.data.is_pinned()


def test_sequential_slices_and_partial_last_batch(shard):
    images, labels = shard
    batches = sequential_batches(N, 16)
    assert batches[-1] == slice(96, 103)
    seen = list(Prefetcher(images, batches, labels, depth=3))
    assert [len(b.images) for b in seen] == [16] * 6 + [7]
    for batch, index in zip(seen, batches):
        check(batch, images, labels, index)


def test_lists_without_labels_and_empty(shard):
    images, _ = shard
    batches = [[5, 1, 5], [102], [], np.array([0, 7])]   # unsorted, repeated, empty: gathered as given
    seen = list(Prefetcher(images, batches))
    assert [b.labels for b in seen] == [None] * 4
    for batch, index in zip(seen, batches):
        check(batch, images, None, index)
    assert list(Prefetcher(images, [])) == []


def test_many_batches_small_queue_slow_consumer(shard):
    images, labels = shard
    rng = np.random.default_rng(1)
    batches = [np.sort(rng.choice(N, size=rng.integers(1, 4), replace=False)) for _ in range(400)]
    pulled = []

    def lazily():   # records how far ahead the thread has read
        for b in batches:
            pulled.append(1)
            yield b

    p = Prefetcher(images, lazily(), labels, depth=1)
    for k, batch in enumerate(p):
        check(batch, images, labels, batches[k])
        if k % 100 == 0:
            time.sleep(0.05)   # the thread fills the queue and must wait
            assert len(pulled) <= k + 3   # the batch yielded, one queued, one being gathered
    assert k == 399 and not prefetch_threads()


def test_batches_stay_valid_after_later_ones(shard):
    images, labels = shard
    batches = sequential_batches(N, 4)
    kept = list(Prefetcher(images, batches, labels, depth=1))
    for batch, index in zip(kept, batches):   # nothing was overwritten by a later batch
        check(batch, images, labels, index)


def test_early_break_joins_the_thread(shard):
    images, labels = shard
    before = len(prefetch_threads())
    p = Prefetcher(images, sequential_batches(N, 2), labels, depth=2)
    for k, _ in enumerate(p):
        if k == 3:
            break
    assert len(prefetch_threads()) == before   # the loop's iterator closed: thread stopped and joined
    assert not p._worker.thread.is_alive()
    with Prefetcher(images, sequential_batches(N, 2), labels) as q:
        it = iter(q)
        next(it)
    assert not q._worker.thread.is_alive()   # with-block left while a reference to the iterator remains


def test_consumer_exception_joins_the_thread(shard):
    images, labels = shard

    def consume():
        for k, _ in enumerate(Prefetcher(images, sequential_batches(N, 2), labels)):
            if k == 5:
                raise KeyboardInterrupt   # e.g. preemption between steps

    with pytest.raises(KeyboardInterrupt):
        consume()
    assert not prefetch_threads()


def test_dropped_iterator_stops_the_thread(shard):
    images, _ = shard
    p = Prefetcher(images, sequential_batches(N, 1))
    it = iter(p)
    next(it)
    thread = p._worker.thread
    del it, p   # never exhausted nor closed: garbage collection stops it
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_worker_exception_reaches_the_consumer(shard):
    images, labels = shard
    got = []
    with pytest.raises(IndexError, match=r"outside \[0, 103\)"):
        for batch in Prefetcher(images, [[0, 1], [2, 103], [4]], labels):
            got.append(batch)
    assert len(got) == 1 and not prefetch_threads()

    def broken():
        yield [0]
        raise OSError("shard unreadable")

    with pytest.raises(OSError, match="unreadable"):
        list(Prefetcher(images, broken()))
    assert not prefetch_threads()


def test_runs_once_and_checks_arguments(shard):
    images, _ = shard
    p = Prefetcher(images, [[0]])
    list(p)
    with pytest.raises(RuntimeError, match="once"):
        iter(p)
    with pytest.raises(ValueError, match="uint8"):
        Prefetcher(np.zeros((2, 4, 4, 3), np.float32), [[0]])
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(images, [[0]], depth=0)
    with pytest.raises(ValueError, match="meta"):
        Prefetcher(images, [[0]], device="meta")


@CUDA
def test_cuda_pinned_nonblocking_and_no_host_sync(shard):
    images, labels = shard
    batches = sequential_batches(N, 4)
    p = Prefetcher(images, batches, labels, device="cuda", depth=1)
    kept = []
    it = iter(p)
    first = next(it)   # first batch outside the check: the pinned buffers are allocated lazily
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in it:
            torch.cuda._sleep(2_000_000)   # a busy compute stream: copies must not overrun buffers
            kept.append(batch._replace(images=batch.images._replace(data=batch.images.data + 0),
                                       labels=batch.labels + 0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(s.bytes is None or s.bytes.is_pinned() for s in p._worker.slots)
    check_cuda(first, images, labels, batches[0])
    for batch, index in zip(kept, batches[1:]):
        check_cuda(batch, images, labels, index)
    assert not prefetch_threads()


@CUDA
def test_cuda_early_break_and_error(shard):
    images, labels = shard
    for k, batch in enumerate(Prefetcher(images, sequential_batches(N, 8), labels, device="cuda")):
        check_cuda(batch, images, labels, slice(8 * k, 8 * k + 8))
        if k == 2:
            break
    with pytest.raises(IndexError):
        list(Prefetcher(images, [[0], [N]], labels, device="cuda"))
    assert not prefetch_threads()


def test_ragged_batch_is_padded_landscape(tmp_path):
    """Portrait images lie transposed in the padded batch, so it is as tall as the tallest landscape side."""
    store = jpeg_store(tmp_path, 40)
    sizes = store.sizes
    batch = next(iter(Prefetcher(store, [np.arange(40)])))
    portrait = sizes[:, 0] > sizes[:, 1]
    assert portrait.any() and (~portrait).any()
    assert torch.equal(batch.images.transposed, torch.from_numpy(portrait))
    assert batch.images.data.shape[1:] == (sizes.min(1).max(), sizes.max(1).max(), 3)


def test_image_hook_runs_per_image_in_the_decode_threads(tmp_path):
    """The per-image CPU augmentation's place (RandAugment): the decoded image and its row, before padding."""
    store = jpeg_store(tmp_path, 30)
    seen = []

    def invert(image: np.ndarray, row: int) -> np.ndarray:
        seen.append((row, threading.current_thread().name))
        return 255 - image

    batches = [np.array([3, 7, 9]), np.array([0, 29])]
    for batch, rows in zip(Prefetcher(store, batches, image_hook=invert, threads=2), batches):
        for j, row in enumerate(rows):
            assert torch.equal(batch.images.image(j), torch.from_numpy(255 - store.decode(int(row))))
    assert sorted(r for r, _ in seen) == [0, 3, 7, 9, 29]
    assert all(name.startswith("decode") for _, name in seen)

    def shrink(image: np.ndarray, row: int) -> np.ndarray:
        return image[1:]

    with pytest.raises(ValueError, match="must keep the size"):
        list(Prefetcher(store, [[0]], image_hook=shrink))
    assert not prefetch_threads()


def test_nvjpeg_needs_a_cuda_target(tmp_path):
    store = jpeg_store(tmp_path, 4)
    with pytest.raises(ValueError, match="nvjpeg"):
        Prefetcher(store, [[0]], decoder="nvjpeg")


def test_cpu_jpeg_decoders_give_the_same_pixels(tmp_path):
    """simplejpeg (the default here) and Pillow: both libjpeg-turbo, integer IDCT; torchvision's too where it loads."""
    from pipeline.data.images import decode, jpeg_decoder, torchvision_decodes

    store = jpeg_store(tmp_path, 12)
    assert jpeg_decoder() == ("torchvision" if torchvision_decodes() else "simplejpeg")
    names = ["simplejpeg", "pil"] + (["torchvision"] if torchvision_decodes() else [])
    for i in range(len(store)):
        h, w = (int(v) for v in store.sizes[i])
        pixels = [decode(store.record(i), h, w, "jpeg", name) for name in names]
        assert all(np.array_equal(p, pixels[0]) for p in pixels[1:])
