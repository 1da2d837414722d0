"""GPU-hours of a config's fine-tunes, from the images they train on and a training speed per model.

    python bench/sweep_cost.py --params configs/hyperparams.yaml --images-per-s resnet101=1000 ...
    python bench/sweep_cost.py --params configs/hyperparams.yaml --costs 'results/**/cost.json'

A fine-tune trains on ``epochs x (train images // batch) x batch`` images (the loop drops the ragged
batch) and evaluates ID val after every epoch (a forward pass, counted as a third of a training image).
Train sizes come from the prepared dataset (``data/prepared/<dataset>/metadata.csv``) when it exists, else
from the official training-set sizes of the README's table minus the held-out ``id_val_fraction``. The
speed of each model is the median ``images_per_s`` of its runs' ``cost.json`` (what every fine-tune
measures: pipeline/training/monitor.py), or given with ``--images-per-s model=N``. Prints per model: runs,
training images, GPU-hours; nothing here is measured by the script itself.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
from pathlib import Path

import pandas as pd

from pipeline.config import load_params
from pipeline.config.settings import method_settings
from pipeline.data.sources import dataset_settings
from pipeline.stages.registry import STAGES_BY_NAME

# Official training images (train or train+val) of the sources without a prepared copy: README's table.
OFFICIAL_TRAIN = {"stanford_dogs": 12_000, "caltech256": 15_360, "mit_indoor67": 5_360, "cub200": 5_994,
                  "stanford_cars": 8_144, "fgvc_aircraft": 6_667, "flowers102": 2_040}
EVAL_COST = 1 / 3   # a forward pass, against a training step's forward + backward


def split_sizes(cfg: dict, dataset: str) -> tuple[int, int]:
    """(train, id_val) images of a dataset."""
    meta = Path("data/prepared") / dataset / "metadata.csv"
    if meta.is_file():
        counts = pd.read_csv(meta, usecols=["split"])["split"].value_counts()
        return int(counts.get("train", 0)), int(counts.get("id_val", 0))
    entry = dataset_settings(cfg["datasets"][dataset])
    total = OFFICIAL_TRAIN[entry["source"]]
    held = round(total * float(entry.get("id_val_fraction", 0.1)))
    return total - held, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images-per-s", nargs="*", default=[], help="model=images/s (training, one GPU)")
    ap.add_argument("--costs", help="glob of cost.json files: the median images/s of each model's runs")
    args = ap.parse_args()
    cfg = load_params(args.params)
    rate = {k: float(v) for k, v in (x.split("=", 1) for x in args.images_per_s)}
    if args.costs:
        seen: dict[str, list[float]] = {}
        for p in glob.glob(args.costs, recursive=True):
            c = json.loads(Path(p).read_text())
            if c.get("images_per_s"):
                seen.setdefault(c["model"], []).append(float(c["images_per_s"]) / int(c.get("gpus") or 1))
        rate.update({m: statistics.median(v) for m, v in seen.items()})
    sizes = {d: split_sizes(cfg, d) for d in cfg["experiment"]["datasets"]}
    totals: dict[str, list[float]] = {}
    for run in STAGES_BY_NAME["finetune"].jobs(cfg):
        s = method_settings(cfg, run["method"], run["hp"], run["dataset"])
        train, val = sizes[run["dataset"]]
        images = s["epochs"] * (train // s["batch_size"]) * s["batch_size"] + EVAL_COST * s["epochs"] * val
        entry = totals.setdefault(run["model"], [0, 0.0])
        entry[0] += 1
        entry[1] += images
    print(f"{'model':<14}{'runs':>7}{'train images':>16}{'images/s':>10}{'GPU-hours':>12}")
    for model, (runs, images) in totals.items():
        r = rate.get(model, math.nan)
        print(f"{model:<14}{runs:>7}{images:>16.3e}{r:>10.0f}{images / r / 3600:>12.0f}")
    all_images = sum(v[1] for v in totals.values())
    hours = sum(v[1] / rate.get(m, math.nan) / 3600 for m, v in totals.items())
    print(f"{'total':<14}{sum(v[0] for v in totals.values()):>7}{all_images:>16.3e}{'':>10}{hours:>12.0f}")


if __name__ == "__main__":
    main()
