"""Training throughput: the project's ``train()`` against a bare loop on the same device, model, precision and batch.

    python bench/train_throughput.py [--device cpu|cuda] [--model NAME] [--image-size S] [--batch-size B]
                                     [--steps N] [--repeats R] [--precision auto|fp32|bf16|fp16]
                                     [--accumulate K] [--compile] [--fp32-too] [--determinism]
                                     [--peak-tflops T] [--json PATH]

* bare: fixed synthetic tensors already on the device; forward, backward, optimizer step, nothing
  else (the same AdamW, the same autocast);
* train: ``pipeline.training.loop.train`` on a split stored as prepare_data stores it: JPEG q90 photo
  crops (scikit-learn's and scikit-image's photographs) with the shorter side at 256/224 of the input
  size, aspect kept; loading thread with JPEG decoding, the recipe's RandomResizedCrop + flip +
  normalisation of the batch on the device, the method's optimizer, schedule, non-finite check and
  progress monitor. Its images/s are the monitor's (training only: the ID-val passes before and
  after are not counted).

The two run alternately ``--repeats`` times; the table gives best and median images/s and the
ratio of medians. Targets: >= 0.95 on CPU (vit_small_patch16_224 at 224 px), >= 0.90 on CUDA
(vit_base_patch16_224, bf16). On CUDA it also prints the model FLOP utilisation (FLOPs of one
step from ``torch.utils.flop_counter``, over ``--peak-tflops``), with ``--fp32-too`` the bf16
speed-up over fp32, and with ``--determinism`` what deterministic kernels cost.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline import compat

compat.apply()
import timm  # noqa: E402

from pipeline.config.settings import default_settings  # noqa: E402
from pipeline.data.augment import EvalTransform, InputTransforms, TrainTransform  # noqa: E402
from pipeline.data.images import Storage, encode, fit  # noqa: E402
from pipeline.data.shards import ImageStore, SplitData  # noqa: E402
from pipeline.methods.assemble import assemble  # noqa: E402
from pipeline.training.loop import LoopConfig, train  # noqa: E402
from pipeline.training.monitor import Monitor  # noqa: E402
from pipeline.training.runtime import Runtime, resolve, set_determinism  # noqa: E402

# Dense bf16 peak of common accelerators, TFLOP/s (vendor figures), for the utilisation line.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def make_model(name: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"img_size": size} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).to(device)


def settings(args: argparse.Namespace, **over) -> dict:
    return {**default_settings(), "optimizer": "adamw", "lr": 1e-4, "precision": args.precision,
            "accumulate": args.accumulate, "compile": args.compile, **over}


def bare(args, device: torch.device, runtime: Runtime) -> float:
    """Images/s of forward + backward + step on fixed device tensors."""
    model = make_model(args.model, args.image_size, device).train()
    net = torch.compile(model) if runtime.compile else model
    opt = assemble(model, settings(args), device=device).optimizer
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.to(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    k = args.accumulate
    micro = [(x[j::k], y[j::k]) for j in range(k)]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for xm, ym in micro:   # the same micro-batches as train(): k forward/backward passes per step
            with runtime.autocast():
                loss = F.cross_entropy(net(xm), ym) / k
            loss.backward()
        opt.step()

    step()   # warm-up: allocator, kernels, compilation
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def photo_store(n: int, short_side: int, seed: int = 0) -> ImageStore:
    """``n`` JPEG q90 records of photo crops (aspect 3:4 to 4:3, both orientations), shorter side ``short_side``."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    pool = [*load_sample_images().images, skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    rng = np.random.default_rng(seed)
    records, index, offset = [], np.zeros((n, 4), np.int64), 0
    for i in range(n):
        src = pool[i % len(pool)]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = fit(Image.fromarray(src[top:top + ch, left:left + cw]), short_side)
        record, rh, rw = encode(crop, Storage(short_side, "jpeg", 90))
        records.append(record)
        index[i] = (offset, len(record), rh, rw)
        offset += len(record)
    return ImageStore(np.frombuffer(b"".join(records), dtype=np.uint8), index, "jpeg")


def pipeline_train(args, device: torch.device, precision: str, deterministic: bool = True) -> float:
    """Images/s of ``train()`` over ``args.steps`` steps (its own monitor: evaluation excluded)."""
    n = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    store = args.store if getattr(args, "store", None) is not None else photo_store(n, args.storage_size)
    args.store = store   # built once, shared by the repeats
    labels = pd.DataFrame({"label": rng.integers(0, 10, n)})
    data = SplitData(store, labels)
    val = SplitData(ImageStore(store.data, store.index[:8], store.encoding), labels.iloc[:8].reset_index(drop=True))
    model = make_model(args.model, args.image_size, device)
    s = settings(args, precision=precision, deterministic=deterministic)
    set_determinism(deterministic)
    runtime = resolve(s, device, model)
    method = assemble(model, s, device=device)
    cfg = LoopConfig(epochs=1, batch_size=args.batch_size, warmup_epochs=0.0, label_smoothing=0.0, grad_clip=0.0,
                     bn="eval", seed=0, accumulate=args.accumulate, log_every_s=1e9)
    mean, std = tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])
    transforms = InputTransforms(TrainTransform(args.image_size, mean, std, (0.08, 1.0), hflip=True),
                                 EvalTransform(args.image_size, mean, std, crop_pct=0.875))
    result = train(model, method.optimizer, data, val, transforms, cfg, hooks=method.hooks, runtime=runtime,
                   monitor=Monitor("bench", device, every_s=1e9))
    return float(result.cost["images_per_s"])


def step_flops(args, device: torch.device, runtime: Runtime) -> int:
    """FLOPs of one training step (forward + backward) at the benchmark's batch size."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(args.model, args.image_size, device).train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        with runtime.autocast():
            loss = F.cross_entropy(model(x), torch.zeros(args.batch_size, dtype=torch.long, device=device))
        loss.backward()
    return int(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_pair(fn_a, fn_b, repeats: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for rep in range(repeats):   # alternating, so that other load on the machine affects both alike
        for fn, out in ((fn_a, a), (fn_b, b))[::1 if rep % 2 == 0 else -1]:
            out.append(fn())
    return a, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="default: vit_small_patch16_224 on CPU, vit_base_patch16_224 else")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 128 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 6 on CPU, 50 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fp32-too", action="store_true", help="also train() in fp32: the bf16 speed-up")
    ap.add_argument("--determinism", action="store_true", help="also train() with deterministic: false")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    args.storage_size, args.store = round(args.image_size * 256 / 224), None   # the recipes' storage per crop size
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.model = args.model or ("vit_base_patch16_224" if cuda else "vit_small_patch16_224")
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.steps = args.steps or (50 if cuda else 6)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    runtime = resolve(settings(args), device, make_model(args.model, args.image_size, device))
    args.precision = runtime.precision

    rates_bare, rates_train = median_pair(lambda: bare(args, device, runtime),
                                          lambda: pipeline_train(args, device, runtime.precision), args.repeats)
    out = {"args": {k: v for k, v in vars(args).items() if k != "store"}, "bare": rates_bare, "train": rates_train,
           "ratio": statistics.median(rates_train) / statistics.median(rates_bare)}
    print(f"{args.model} @ {args.image_size} px, batch {args.batch_size} (accumulate {args.accumulate}), "
          f"{device} {runtime.precision}{', compiled' if args.compile else ''}; {args.steps} steps x "
          f"{args.repeats} runs each, alternating; torch threads {torch.get_num_threads()}")
    print(f"{'loop':<8}{'img/s best':>12}{'img/s median':>14}")
    for name, rates in (("bare", rates_bare), ("train()", rates_train)):
        print(f"{name:<8}{max(rates):>12.1f}{statistics.median(rates):>14.1f}")
    target = 0.90 if cuda else 0.95
    print(f"train() / bare = {out['ratio']:.3f} (median; target >= {target})")
    if cuda:
        flops = step_flops(args, device, runtime)
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        achieved = flops * statistics.median(rates_train) / args.batch_size / 1e12
        out |= {"step_tflop": flops / 1e12, "achieved_tflops": achieved, "peak_tflops": peak}
        line = f"{flops / 1e12:.2f} TFLOP per step; train() achieves {achieved:.1f} TFLOP/s"
        print(line + (f" = {100 * achieved / peak:.1f}% MFU of {peak:.0f} ({name})" if peak else ""))
    if args.fp32_too and runtime.precision != "fp32":
        fp32 = [pipeline_train(args, device, "fp32") for _ in range(args.repeats)]
        out["train_fp32"] = fp32
        speedup = statistics.median(rates_train) / statistics.median(fp32)
        print(f"{runtime.precision} / fp32 speed-up of train(): {speedup:.2f}x")
    if args.determinism:
        fast = [pipeline_train(args, device, runtime.precision, deterministic=False) for _ in range(args.repeats)]
        out["train_nondeterministic"] = fast
        print(f"deterministic kernels cost: non-deterministic / deterministic = "
              f"{statistics.median(fast) / statistics.median(rates_train):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
