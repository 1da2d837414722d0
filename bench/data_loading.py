"""Training-batch throughput: the prepared uint8 shards vs decoding the JPEGs with PIL every epoch.

    python bench/data_loading.py [--images N] [--image-size S] [--batch-size B] [--workers W]
                                 [--repeats R] [--json PATH] [--input-path-only]

N JPEGs (500x375, quality 90, a smooth random colour field plus noise, so that files are about
as large as ImageNet's and decoding does real work) are written with a seeded RNG into an
ImageFolder layout ``<tmp>/train/<class>/<i>.jpg`` (10 classes); that is not timed. They are then
decoded once into a memory-mapped uint8 ``.npy`` shard with the pipeline's own
``decode_into`` / ``decode_image`` (timed on its own: a one-off cost, not part of the ratio).

Two ways of producing an epoch of augmented float training batches are timed:

* shards: exactly the training loop's per-step path (``pipeline/training/loop.py``): a shuffled
  order from a ``torch.Generator``, indices sorted per batch, ``images[idx]`` from the memory map,
  ``random_resized_crop(scale=(0.08, 1), hflip=True)`` on the uint8 images, then ``normalize``
  with ImageNet mean/std;
* PIL: ``torchvision.datasets.ImageFolder`` with RandomResizedCrop, RandomHorizontalFlip,
  ToTensor and Normalize, through a shuffling ``DataLoader`` with W worker processes (started per
  epoch, the DataLoader default; forking them is a small part of an epoch).

Both get the same CPU budget: W workers for PIL, ``torch.set_num_threads(W)`` for the shards,
and the same allocator settings (``pipeline.compat.apply``; the workers fork from this process).
Both drop the ragged last batch, as the training loop does. The files and the shard are in the
page cache (just written), so both measure CPU cost, not disk. Each path runs one untimed batch
first, then R timed full epochs, alternating between the paths; the table gives the best and
the median. Target: shards >= 5x. A third path, ``prefetch``, is the input path of
``pipeline.data.loader`` + ``pipeline.data.augment``: a background thread gathers the same sorted
batches from the memory map, the consumer runs the batched ``Augment`` (all on the CPU here).

Then the input path's parts alone, on the same shard (``--input-path-only`` skips the JPEGs and
PIL and fills the shard with random pixels instead):

* host side: gathering each batch's rows from the memory map (``np.take`` into reused,
  pre-faulted buffers, as the pinned ring on a GPU node) with 1 thread, with 2 threads over half
  batches, through a ``Prefetcher`` on CPU (its thread, queue and fresh per-batch tensors), and a
  first pass over a freshly opened memory map (page faults included). Target >= 10,000 images/s
  at 224 px on 2 cores;
* augmentation alone on one uint8 batch: today's per-image ``random_resized_crop`` + ``normalize``
  vs the batched ``Augment`` (float32 NCHW, and bfloat16 channels_last), scale (0.08, 1), flip.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline import compat

compat.apply()  # before torchvision: the CPU wheel needs the op shim
import torch.nn.functional as F  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from pipeline.data.augment import Augment  # noqa: E402
from pipeline.data.decode import decode_into  # noqa: E402
from pipeline.data.loader import Prefetcher, shuffled_batches  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet
CLASSES = 10
SCALE = (0.08, 1.0)


def fabricate(root: Path, n: int, seed: int = 0) -> list[str]:
    """Write ``n`` photo-like 500x375 JPEGs into ``root/train/<class>/``; their paths in ImageFolder order."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        field = np.asarray(field.resize((500, 375), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = (field + 20 * rng.standard_normal(field.shape, dtype=np.float32)).clip(0, 255).astype(np.uint8)
        path = root / "train" / f"class{i % CLASSES:02d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return [p for p, _ in datasets.ImageFolder(str(root / "train")).samples]


def random_resized_crop(images: np.ndarray | torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        hflip: bool = False) -> torch.Tensor:
    """The per-image crop the training loop used before ``pipeline.data.augment`` (kept as the baseline):
    the same draws, then a Python loop cropping and resizing each uint8 image."""
    x = images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))
    n, h, w = x.shape[:3]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    side = (area.sqrt() * min(h, w)).round().clamp(1, min(h, w)).long()
    top = (torch.rand(n, generator=generator) * (h - side + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - side + 1)).long()
    flip = (torch.rand(n, generator=generator) < 0.5) if hflip else torch.zeros(n, dtype=torch.bool)
    out = torch.empty((n, x.shape[3], h, w), dtype=torch.uint8)
    for i in range(n):
        s, t, lft = int(side[i]), int(top[i]), int(left[i])
        crop = x[i, t:t + s, lft:lft + s].permute(2, 0, 1)
        if s != h or s != w:
            crop = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The baseline's normalisation of a uint8 NCHW batch (one fused multiply-add)."""
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.addcmul(-torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t, x, 1 / (255 * std_t))


def shard_epoch(images: np.ndarray, batch_size: int, gen: torch.Generator, steps: int | None = None) -> None:
    """``steps`` (default: all full) training batches as the loop made them before the prefetching input path."""
    n = len(images)
    order = torch.randperm(n, generator=gen)
    for i in range(n // batch_size if steps is None else steps):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size].numpy())
        normalize(random_resized_crop(images[idx], SCALE, gen, hflip=True), MEAN, STD)


def prefetch_epoch(images: np.ndarray, batch_size: int, gen: torch.Generator, steps: int | None = None) -> None:
    """The same epoch as ``pipeline.training.loop.train`` makes it: prefetched uint8 batches, batched augmentation."""
    order = torch.randperm(len(images), generator=gen)
    aug = Augment(MEAN, STD, SCALE, hflip=True)
    steps = len(images) // batch_size if steps is None else steps
    for batch in Prefetcher(images, shuffled_batches(order, batch_size, steps)):
        aug(batch.images, gen)


def best_rate(fn, images_per_call: int, repeats: int, min_seconds: float = 0.3) -> tuple[float, float]:
    """(best, median) images/s over ``repeats`` timings, each of enough calls to last ``min_seconds``."""
    fn()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    calls, rates = max(1, calls), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * images_per_call / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def input_path(shard: Path, batch_size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Images/s (best, median) of the host-side gather variants and of the augmentation alone."""
    images = np.load(shard, mmap_mode="r")
    n = len(images)
    batches = shuffled_batches(torch.randperm(n, generator=torch.Generator().manual_seed(1)), batch_size,
                               n // batch_size)
    epoch = len(batches) * batch_size
    buffers = [np.ones((batch_size, *images.shape[1:]), np.uint8) for _ in range(3)]   # pre-faulted, like pinned

    def gather(src: np.ndarray = images) -> None:
        for k, idx in enumerate(batches):
            np.take(src, idx, axis=0, out=buffers[k % 3], mode="clip")

    pool = ThreadPoolExecutor(2)
    half = batch_size // 2

    def gather2() -> None:
        for k, idx in enumerate(batches):
            out = buffers[k % 3]
            parts = [pool.submit(np.take, images, idx[a:b], 0, out[a:b], "clip")
                     for a, b in ((0, half), (half, batch_size))]
            for part in parts:
                part.result()

    rows = {}
    t0 = time.perf_counter()
    gather(np.load(shard, mmap_mode="r"))   # a new mapping: every page faults in once
    rows["gather, fresh memory map (1 pass)"] = (epoch / (time.perf_counter() - t0),) * 2
    rows["gather, 1 thread"] = best_rate(gather, epoch, repeats)
    rows["gather, 2 threads"] = best_rate(gather2, epoch, repeats)
    rows["Prefetcher (CPU)"] = best_rate(lambda: sum(1 for _ in Prefetcher(images, batches)), epoch, repeats)
    pool.shutdown()

    x = torch.from_numpy(np.array(images[batches[0]]))
    gen = torch.Generator().manual_seed(2)
    variants = {"augment today (per image)": lambda: normalize(random_resized_crop(x, SCALE, gen, hflip=True),
                                                                MEAN, STD),
                "augment batched f32": lambda: Augment(MEAN, STD, SCALE, hflip=True)(x, gen),
                "augment batched bf16 CL": lambda: Augment(MEAN, STD, SCALE, hflip=True, dtype=torch.bfloat16,
                                                           memory_format=torch.channels_last)(x, gen)}
    for name, fn in variants.items():
        rows[name] = best_rate(fn, batch_size, repeats)
    return rows


def random_shard(path: Path, n: int, size: int) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for start in range(0, n, 256):
        out[start:start + 256] = rng.integers(0, 256, out[start:start + 256].shape, dtype=np.uint8)
    out.flush()


def print_input_path(rows: dict[str, tuple[float, float]], args: argparse.Namespace) -> None:
    print(f"input path parts at {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} torch "
          f"threads; best/median of {args.repeats}")
    print(f"{'part':<36}{'img/s best':>12}{'img/s median':>14}")
    for name, (best, med) in rows.items():
        print(f"{name:<36}{best:>12.0f}{med:>14.0f}")
    ratio = rows["augment batched f32"][1] / rows["augment today (per image)"][1]
    print(f"host gather 1 thread: {rows['gather, 1 thread'][1]:.0f} img/s median (target >= 10000); "
          f"batched / per-image augmentation on CPU = {ratio:.2f}x median")


def pil_loader(root: Path, size: int, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=SCALE), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(datasets.ImageFolder(str(root / "train"), tf), batch_size=batch_size,
                                       shuffle=True, drop_last=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2,
                    help="DataLoader workers for PIL, and torch threads (and decode threads) for the shards")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--input-path-only", action="store_true",
                    help="only the input path's parts, on a shard of random pixels (no JPEGs, no PIL)")
    args = ap.parse_args(argv)
    if args.images < args.batch_size:
        ap.error("--images must be at least --batch-size (the ragged last batch is dropped)")
    threads = max(1, args.workers)
    torch.set_num_threads(threads)
    steps = args.images // args.batch_size
    load0 = os.getloadavg()[0]  # other work on the machine slows both paths, unevenly

    if args.input_path_only:
        with tempfile.TemporaryDirectory(prefix="bench_data_loading_") as tmp:
            random_shard(Path(tmp) / "train.npy", args.images, args.image_size)
            parts = input_path(Path(tmp) / "train.npy", args.batch_size, args.repeats)
        print_input_path(parts, args)
        print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "input_path": parts}, indent=2) + "\n")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_data_loading_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        sources = fabricate(root, args.images)
        t_gen = time.perf_counter() - t0
        kb = statistics.fmean(Path(s).stat().st_size for s in sources) / 1e3

        t0 = time.perf_counter()
        out = np.lib.format.open_memmap(root / "train.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(sources), args.image_size, args.image_size, 3))
        decode_into(out, sources, Image.open, args.image_size, threads, desc="prepare")
        out.flush()
        del out
        t_prep = time.perf_counter() - t0
        images = np.load(root / "train.npy", mmap_mode="r")

        gen = torch.Generator().manual_seed(0)
        loader = pil_loader(root, args.image_size, args.batch_size, args.workers)
        shard_epoch(images, args.batch_size, gen, steps=1)  # warm-up batches, untimed
        next(iter(loader))  # its workers stop here: none keep decoding in the background
        prefetch_epoch(images, args.batch_size, gen, steps=1)
        epochs = {"shards": lambda: shard_epoch(images, args.batch_size, gen), "PIL": lambda: sum(1 for _ in loader),
                  "prefetch": lambda: prefetch_epoch(images, args.batch_size, gen)}
        times: dict[str, list[float]] = {name: [] for name in epochs}
        for rep in range(args.repeats):  # alternating, so that load on the machine affects both alike
            for name in list(epochs)[::1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                epochs[name]()
                times[name].append(time.perf_counter() - t0)
        parts = input_path(root / "train.npy", args.batch_size, args.repeats)

    n_epoch = steps * args.batch_size
    print(f"{args.images} JPEGs 500x375 q90 (mean {kb:.0f} kB), {CLASSES} classes, written in {t_gen:.1f} s; "
          f"shard {args.image_size}x{args.image_size} prepared in {t_prep:.1f} s "
          f"({args.images / t_prep:.0f} img/s, {threads} threads, one-off, not in the ratio)")
    print(f"epoch = {steps} batches of {args.batch_size} = {n_epoch} images; CPU budget {args.workers} "
          f"DataLoader workers for PIL, torch.set_num_threads({threads}) for shards; best/median of {args.repeats}; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'path':<8}{'img/s best':>12}{'img/s median':>14}{'ms/batch best':>15}{'ms/batch median':>17}")
    rows = {}
    for name, t in times.items():
        best, med = min(t), statistics.median(t)
        rows[name] = {"images_per_s_best": n_epoch / best, "images_per_s_median": n_epoch / med,
                      "ms_per_batch_best": 1e3 * best / steps, "ms_per_batch_median": 1e3 * med / steps,
                      "epoch_seconds": t}
        r = rows[name]
        print(f"{name:<8}{r['images_per_s_best']:>12.0f}{r['images_per_s_median']:>14.0f}"
              f"{r['ms_per_batch_best']:>15.1f}{r['ms_per_batch_median']:>17.1f}")
    ratio = statistics.median(times["PIL"]) / statistics.median(times["shards"])
    ratio_best = min(times["PIL"]) / min(times["shards"])
    print(f"ratio shards / PIL = {ratio:.1f}x median, {ratio_best:.1f}x best (target >= 5x); prefetch / PIL = "
          f"{statistics.median(times['PIL']) / statistics.median(times['prefetch']):.1f}x median")
    print_input_path(parts, args)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "jpeg_mean_kb": kb, "prepare_seconds": t_prep, "epoch_images": n_epoch,
            "paths": rows, "ratio_median": ratio, "ratio_best": ratio_best, "target": 5.0,
            "input_path": parts}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
