"""Inference throughput: stored images through the model's eval transform on the device vs bare inference.

    python bench/inference.py [--model NAME] [--image-size S] [--images N] [--batch-size B]
                              [--device cpu|cuda] [--threads T] [--bf16] [--channels-last]
                              [--repeats R] [--json PATH]

A headless timm model (``num_classes=0``, random weights: speed does not depend on
them) extracts features from N random uint8 S x S images in a memory-mapped raw shard (the eval
transform at crop_pct 1: no resampling, as for the digits demo), three ways:

* bare: the model alone over batches already normalised and resident on the device (under
  the same autocast);
* pipeline: :func:`pipeline.models.inference.predict_logits`, the path of feature
  extraction, evaluation, WiSE-FT, soups and ID-val: ``Prefetcher`` (background gather,
  pinned, non-blocking copies on CUDA), the ``EvalTransform`` on the device, outputs copied
  non-blocking into one (pinned) host tensor, a single device sync at the end;
* naive: normalise on the CPU, ``.to(device)``, ``.cpu()`` per batch (how inference ran before).

Target: pipeline / bare >= 0.95. Runs alternate; the table gives best and median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline import compat

compat.apply()  # before timm
import timm  # noqa: E402

from pipeline.data.augment import EvalTransform, normalize  # noqa: E402
from pipeline.data.loader import sequential_batches  # noqa: E402
from pipeline.models.inference import predict_logits  # noqa: E402


@torch.no_grad()
def naive_features(model: nn.Module, images: np.ndarray, mean, std, batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(normalize(torch.from_numpy(np.array(images[sl])).permute(0, 3, 1, 2), mean, std)
                            .to(device)).float().cpu()
                      for sl in sequential_batches(len(images), batch_size)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (as precision: bf16)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = "bf16" if args.bf16 else "fp32"
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = timm.create_model(args.model, pretrained=False, num_classes=0).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=fmt)
    cfg = model.pretrained_cfg
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        path = Path(tmp) / "split.npy"
        shard = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                          shape=(args.images, args.image_size, args.image_size, 3))
        shard[...] = np.random.default_rng(0).integers(0, 256, shard.shape, dtype=np.uint8)
        shard.flush()
        del shard
        images = np.load(path, mmap_mode="r")
        resident = [normalize(torch.from_numpy(np.array(images[sl])).to(device).permute(0, 3, 1, 2), mean, std,
                              memory_format=fmt)
                    for sl in sequential_batches(len(images), args.batch_size)]

        @torch.no_grad()
        def bare() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                for x in resident:
                    model(x)

        paths: dict[str, Callable[[], object]] = {
            "bare": bare,
            "pipeline": lambda: predict_logits(model, images, EvalTransform(args.image_size, mean, std),
                                               args.batch_size, precision, fmt)}
        if not args.bf16 and not args.channels_last:
            paths["naive"] = lambda: naive_features(model, images, mean, std, args.batch_size)
            torch.testing.assert_close(paths["pipeline"](), paths["naive"](), atol=1e-4, rtol=1e-4)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():   # warm-up: allocator, cudnn autotuning
            fn()
        for rep in range(args.repeats):
            for name in list(paths)[::1 if rep % 2 == 0 else -1]:
                sync(device)
                t0 = time.perf_counter()
                paths[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)

    print(f"{args.model} @ {args.image_size} px, {args.images} images, batch {args.batch_size}, {device}, "
          f"{precision}, {'channels_last' if args.channels_last else 'NCHW'}; best/median of {args.repeats}")
    print(f"{'path':<12}{'img/s best':>12}{'img/s median':>14}")
    rows = {}
    for name, t in times.items():
        rows[name] = {"images_per_s_best": args.images / min(t), "images_per_s_median": args.images /
                      statistics.median(t), "seconds": t}
        print(f"{name:<12}{rows[name]['images_per_s_best']:>12.0f}{rows[name]['images_per_s_median']:>14.0f}")
    ratio = statistics.median(times["bare"]) / statistics.median(times["pipeline"])
    print(f"pipeline / bare = {ratio:.3f} median (target >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "paths": rows, "ratio_median": ratio},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
