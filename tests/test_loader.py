"""Background prefetching of uint8 batches (pipeline.data.loader): order, contents, shutdown, errors."""
import threading
import time

import numpy as np
import pytest
import torch

from pipeline.data.loader import Prefetcher, sequential_batches, shuffled_batches

N = 103
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A memory-mapped uint8 [N, 6, 5, 3] shard of random images and their labels, as the pipeline reads them."""
    path = tmp_path_factory.mktemp("shard") / "train.npy"
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(N, 6, 5, 3))
    out[...] = rng.integers(0, 256, out.shape, dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r"), rng.integers(0, 10, N)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def check(batch, images, labels, index) -> None:
    assert torch.equal(batch.images, torch.from_numpy(np.array(images[index])))
    assert torch.equal(batch.labels, torch.from_numpy(labels[index]))


def check_cuda(batch, images, labels, index) -> None:
    check(batch._replace(images=batch.images.cpu(), labels=batch.labels.cpu()), images, labels, index)


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
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (16, 6, 5, 3)
        assert batch.labels.dtype == torch.int64 and not batch.images.is_pinned()


def test_sequential_slices_and_partial_last_batch(shard):
    images, labels = shard
    batches = sequential_batches(N, 16)
    assert batches[-1] == slice(96, 103)
    seen = list(Prefetcher(images, batches, labels, depth=3))
    assert [len(b.images) for b in seen] == [16] * 6 + [7]
    for batch, index in zip(seen, batches):
        check(batch, images, labels, index)
    assert torch.equal(torch.cat([b.images for b in seen]), torch.from_numpy(np.array(images)))


def test_lists_without_labels_and_empty(shard):
    images, _ = shard
    batches = [[5, 1, 5], [102], [], np.array([0, 7])]   # unsorted, repeated, empty: gathered as given
    seen = list(Prefetcher(images, batches))
    assert [b.labels for b in seen] == [None] * 4
    for batch, index in zip(seen, batches):
        assert torch.equal(batch.images, torch.from_numpy(np.array(images[np.array(index, dtype=np.int64)])))
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
            kept.append((batch.images + 0, batch.labels + 0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(s.images is None or s.images.is_pinned() for s in p._worker.slots)
    check_cuda(first, images, labels, batches[0])
    for (x, y), index in zip(kept, batches[1:]):
        assert x.is_cuda and torch.equal(x.cpu(), torch.from_numpy(np.array(images[index])))
        assert torch.equal(y.cpu(), torch.from_numpy(labels[index]))
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
