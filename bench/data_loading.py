"""Prepared data vs decoding the original JPEGs every epoch: disk per image and the host input path.

    python bench/data_loading.py [--images N] [--size S] [--storage-size T] [--quality Q] [--batch-size B]
                                 [--workers W] [--repeats R] [--device cpu|cuda] [--json PATH]

N photo-like JPEGs are written once (not timed) into an ImageFolder layout ``<tmp>/train/<class>/<i>.jpg``
(10 classes): crops of the real photographs scikit-learn and scikit-image ship, at ImageNet's typical
sizes (longer side 500, aspect 4:3 to 3:2, both orientations), quality 92, about ImageNet's file size.
They are then prepared twice, timed apart (a one-off cost, not in any ratio): with the pipeline's own
writer (:mod:`pipeline.data.decode`) at ``storage_size`` T as JPEG quality Q, and as today's format
before it, raw uint8 S x S squares (``S*S*3`` bytes per image).

1. **Disk per image** at S-px recipes: the JPEG shard (and its index) over the raw S x S squares.
   Target <= 0.25x at S = 224, T = 256, Q = 90.
2. **Host input path** (read, decode, crop, resize, flip, normalise) for one epoch of training batches,
   both on the same CPU budget of W cores (``os.sched_setaffinity`` when the machine has more):

   * ours: the training loop's path on a CPU target: a shuffled order, sorted batches, a
     :class:`~pipeline.data.loader.Prefetcher` with W decode threads (Pillow / libjpeg-turbo) reading
     the memory-mapped shard, then :class:`~pipeline.data.augment.TrainTransform` (RandomResizedCrop
     S, scale (0.08, 1), ratio (3/4, 4/3), bilinear, antialiased; flip; normalise) in the consumer
     thread, W torch threads;
   * torchvision: ``ImageFolder`` on the original JPEGs, PIL decoding, ``RandomResizedCrop(S)`` (same
     scale, ratio, interpolation), ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, through a
     shuffling ``DataLoader`` with W worker processes (started per epoch, its default).

   Both drop the ragged last batch; files are in the page cache (just written): CPU cost, not disk.
   Each path runs one untimed batch, then R timed epochs, alternating; the ratio is of the medians.
   Target >= 3x at S = 224 on 2 cores.
3. **Parts** of our path, per image: decoding a stored record (1 thread), and the crop + resize of one
   batch with each executor on the CPU (the per-image uint8 ``loop``, the CUDA path's ``matmul``).

``--device cuda`` (bench/gpu_checks.sh) runs ours onto the GPU (pinned copies, the batched ``matmul``
executor there; ``PIPELINE_JPEG_DECODER=nvjpeg`` decodes on the GPU too); its ratio to the CPU-bound
DataLoader then only says how far the host keeps up.
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
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline import compat

compat.apply()  # before torchvision: the CPU wheel needs the op shim
from torchvision import datasets, transforms  # noqa: E402

from pipeline.data.augment import TrainTransform  # noqa: E402
from pipeline.data.decode import store_into  # noqa: E402
from pipeline.data.images import Storage  # noqa: E402
from pipeline.data.loader import Prefetcher, shuffled_batches  # noqa: E402
from pipeline.data.shards import ImageStore, SplitWriter  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet
CLASSES = 10
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = list(load_sample_images().images)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        out.append(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]))
    return out


def fabricate(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` photo JPEGs at ImageNet-like sizes into ``root/train/<class>/``; their paths in ImageFolder order."""
    rng = np.random.default_rng(seed)
    pool = photos()
    for i in range(n):
        src = pool[int(rng.integers(len(pool)))]
        h, w = src.shape[:2]
        aspect = float(rng.uniform(4 / 3, 3 / 2))
        ch = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        cw = min(w, int(ch * aspect))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(src[top:top + ch, left:left + cw])
        size = (500, round(500 * ch / cw))
        if rng.random() < 0.25:   # a quarter portrait, as in ImageNet
            crop, size = crop.transpose(Image.Transpose.ROTATE_90), size[::-1]
        path = root / "train" / f"class{i % CLASSES:02d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.resize(size, Image.Resampling.BICUBIC).save(path, "JPEG", quality=92)
    return [p for p, _ in datasets.ImageFolder(str(root / "train")).samples]


def prepare(sources: list[str], tmp: Path, storage: Storage, threads: int) -> tuple[ImageStore, float]:
    """The split as prepare_data writes it (JPEG at the storage size), and the seconds it took."""
    t0 = time.perf_counter()
    writer = SplitWriter(tmp, "train", len(sources))
    store_into(writer, sources, Image.open, storage, threads, desc="prepare")
    writer.close()
    seconds = time.perf_counter() - t0
    index = np.load(tmp / "train.index.npy")
    return ImageStore(np.memmap(tmp / "train.images", dtype=np.uint8, mode="r"), index, storage.encoding), seconds


def raw_squares(sources: list[str], tmp: Path, size: int) -> tuple[int, float]:
    """Bytes and seconds of today's format before this one: uint8 S x S centre squares in one .npy."""
    t0 = time.perf_counter()
    out = np.lib.format.open_memmap(tmp / "squares.npy", mode="w+", dtype=np.uint8, shape=(len(sources), size, size, 3))
    for i, s in enumerate(sources):
        with Image.open(s) as img:
            img.draft("RGB", (size, size))
            out[i] = np.asarray(ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR))
    out.flush()
    del out
    return (tmp / "squares.npy").stat().st_size, time.perf_counter() - t0


def our_epoch(store: ImageStore, transform: TrainTransform, batch_size: int, threads: int, gen: torch.Generator,
              steps: int | None = None, device: str = "cpu") -> None:
    """The training loop's input path, without the model."""
    order = torch.randperm(len(store), generator=gen)
    steps = len(store) // batch_size if steps is None else steps
    rows = shuffled_batches(order, batch_size, steps)
    shapes = torch.from_numpy(store.sizes)
    for k, batch in enumerate(Prefetcher(store, rows, threads=threads, device=device)):
        transform.apply(batch.images, transform.draw(shapes[rows[k]], gen))
    if device != "cpu":
        torch.cuda.synchronize()


def pil_loader(root: Path, size: int, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=SCALE, ratio=RATIO),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.utils.data.DataLoader(datasets.ImageFolder(str(root / "train"), tf), batch_size=batch_size,
                                       shuffle=True, drop_last=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0))


def rate(fn, images: int, repeats: int) -> float:
    """Median images/s of ``repeats`` timed calls (after one untimed)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return images / statistics.median(times)


def parts(store: ImageStore, size: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Images/s of decoding alone (1 thread) and of one batch's crop + resize with each executor."""
    rows = list(range(min(len(store), batch_size)))
    out = {"decode 1 thread": rate(lambda: [store.decode(i) for i in rows], len(rows), repeats)}
    batch = next(iter(Prefetcher(store, [np.array(rows)])))
    gen = torch.Generator().manual_seed(1)
    for method in ("loop", "matmul"):
        tf = TrainTransform(size, MEAN, STD, SCALE, RATIO, hflip=True, method=method)
        out[f"crop+resize+normalise, {method}"] = rate(lambda tf=tf: tf(batch.images, gen), len(rows), repeats)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=224, help="the recipe's crop size (and today's raw squares)")
    ap.add_argument("--storage-size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="CPU cores for both paths: DataLoader workers / "
                                                           "decode threads and torch threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="where ours crops and resizes (cuda: the GPU path)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.images < args.batch_size:
        ap.error("--images must be at least --batch-size (the ragged last batch is dropped)")
    workers = max(1, args.workers)
    if args.device == "cpu" and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > workers:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:workers])   # one budget for both paths
    torch.set_num_threads(workers)
    steps = args.images // args.batch_size
    load0 = os.getloadavg()[0]   # other work on the machine slows both paths, unevenly

    with tempfile.TemporaryDirectory(prefix="bench_data_loading_") as tmp:
        root = Path(tmp)
        sources = fabricate(root, args.images)
        original_kb = statistics.fmean(Path(s).stat().st_size for s in sources) / 1e3
        store, t_prep = prepare(sources, root, Storage(args.storage_size, "jpeg", args.quality), workers)
        jpeg_bytes = (root / "train.images").stat().st_size + (root / "train.index.npy").stat().st_size
        raw_bytes, t_raw = raw_squares(sources, root, args.size)
        disk = {"jpeg_bytes_per_image": jpeg_bytes / args.images, "raw_bytes_per_image": raw_bytes / args.images,
                "ratio": jpeg_bytes / raw_bytes, "original_kb_per_image": original_kb,
                "prepare_seconds": t_prep, "raw_prepare_seconds": t_raw,
                "stored_mean_shape": [float(v) for v in store.sizes.mean(0)]}

        transform = TrainTransform(args.size, MEAN, STD, SCALE, RATIO, hflip=True)
        gen = torch.Generator().manual_seed(0)
        loader = pil_loader(root, args.size, args.batch_size, workers)
        our_epoch(store, transform, args.batch_size, workers, gen, steps=1, device=args.device)   # warm-up, untimed
        next(iter(loader))   # its workers stop here: none keep decoding in the background
        epochs = {"ours": lambda: our_epoch(store, transform, args.batch_size, workers, gen, device=args.device),
                  "torchvision": lambda: sum(1 for _ in loader)}
        times: dict[str, list[float]] = {name: [] for name in epochs}
        for rep in range(args.repeats):   # alternating, so that load on the machine affects both alike
            for name in list(epochs)[::1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                epochs[name]()
                times[name].append(time.perf_counter() - t0)
        part_rates = parts(store, args.size, args.batch_size, args.repeats)

    n_epoch = steps * args.batch_size
    ratio = statistics.median(times["torchvision"]) / statistics.median(times["ours"])
    print(f"{args.images} photo JPEGs (ImageNet-like sizes, q92, mean {original_kb:.0f} kB); {workers} cores; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"disk per image: JPEG q{args.quality} at shorter side {args.storage_size} (mean stored "
          f"{disk['stored_mean_shape'][0]:.0f}x{disk['stored_mean_shape'][1]:.0f}) "
          f"{disk['jpeg_bytes_per_image'] / 1e3:.1f} kB vs raw {args.size}x{args.size} squares "
          f"{disk['raw_bytes_per_image'] / 1e3:.1f} kB = {disk['ratio']:.3f}x (target <= 0.25); prepared in "
          f"{t_prep:.1f} s ({args.images / t_prep:.0f} img/s, one-off)")
    from pipeline.data.images import jpeg_decoder

    print(f"host input path, epoch of {steps} x {args.batch_size} at {args.size} px; ours onto {args.device}, "
          f"JPEG decoder {jpeg_decoder()}; median of {args.repeats}:")
    rows = {}
    for name, t in times.items():
        rows[name] = {"images_per_s_median": n_epoch / statistics.median(t), "images_per_s_best": n_epoch / min(t),
                      "epoch_seconds": t}
        print(f"  {name:<12}{rows[name]['images_per_s_median']:>8.0f} img/s median, "
              f"{rows[name]['images_per_s_best']:.0f} best")
    print(f"ours / torchvision ImageFolder + PIL = {ratio:.2f}x median (target >= 3)")
    print("parts of ours, img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in part_rates.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "disk": disk, "paths": rows, "ratio_median": ratio,
                                               "parts": part_rates, "load_average": load0}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
