"""Training-batch throughput: the prepared uint8 shards vs decoding the JPEGs with PIL every epoch.

    python bench/data_loading.py [--images N] [--image-size S] [--batch-size B] [--workers W]
                                 [--repeats R] [--json PATH]

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
the median. Target: shards >= 5x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline import compat

compat.apply()  # before torchvision: the CPU wheel needs the op shim
from torchvision import datasets, transforms  # noqa: E402

from pipeline.data.decode import decode_into  # noqa: E402
from pipeline.data.tensors import normalize, random_resized_crop  # noqa: E402

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


def shard_epoch(images: np.ndarray, batch_size: int, gen: torch.Generator, steps: int | None = None) -> None:
    """``steps`` (default: all full) training batches as ``pipeline.training.loop.train`` makes them."""
    n = len(images)
    order = torch.randperm(n, generator=gen)
    for i in range(n // batch_size if steps is None else steps):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size].numpy())
        normalize(random_resized_crop(images[idx], SCALE, gen, hflip=True), MEAN, STD)


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
    args = ap.parse_args(argv)
    if args.images < args.batch_size:
        ap.error("--images must be at least --batch-size (the ragged last batch is dropped)")
    threads = max(1, args.workers)
    torch.set_num_threads(threads)
    steps = args.images // args.batch_size
    load0 = os.getloadavg()[0]  # other work on the machine slows both paths, unevenly

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
        epochs = {"shards": lambda: shard_epoch(images, args.batch_size, gen), "PIL": lambda: sum(1 for _ in loader)}
        times: dict[str, list[float]] = {name: [] for name in epochs}
        for rep in range(args.repeats):  # alternating, so that load on the machine affects both alike
            for name in list(epochs)[::1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                epochs[name]()
                times[name].append(time.perf_counter() - t0)

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
    print(f"ratio shards / PIL = {ratio:.1f}x median, {ratio_best:.1f}x best (target >= 5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "jpeg_mean_kb": kb, "prepare_seconds": t_prep, "epoch_images": n_epoch,
            "paths": rows, "ratio_median": ratio, "ratio_best": ratio_best, "target": 5.0}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
