"""WILDS-style prediction files, written from the predictions the evaluation stages saved.

The WILDS leaderboard and its ``examples/evaluate.py`` read one CSV per split and replicate,
``<dataset>_split:<split>_seed:<seed>_epoch:best_pred.csv``: one predicted class per line, in the
order of the WILDS subset (``dataset.get_subset(split)``: the split's examples by increasing
index). The prepared data keeps each image's WILDS index (metadata column ``wilds_index``), so
the rows of our ``predictions.npz`` are put back into that order here; nothing is re-predicted.

    python -m pipeline wilds-predictions results/fmow/m/ft/lr0.001/seed0/predictions.npz \\
        --data data/prepared/fmow --out submission/fmow
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.data.shards import PreparedDataset
from pipeline.data.sources.wilds import SPECS
from pipeline.evaluation.predictions import SINGLE, PredictionFile
from pipeline.io import write_text

log = logging.getLogger(__name__)


def wilds_splits(data: PreparedDataset) -> dict[str, str]:
    """``{our split: WILDS split}`` of a prepared WILDS dataset (aliases left out: each WILDS split once)."""
    spec = data.info.get("official_eval") or {}
    if spec.get("kind") != "wilds":
        raise ValueError(f"{data.root}: not a WILDS dataset (info.json has no WILDS official_eval)")
    return {ours: theirs for theirs, ours in SPECS[spec["dataset"]].splits.items()
            if ours in data.split_names and data.physical(ours) == ours and theirs != "train"}


def file_name(dataset: str, split: str, seed: int) -> str:
    return f"{dataset}_split:{split}_seed:{seed}_epoch:best_pred.csv"


def write_wilds_predictions(predictions: PredictionFile, data: PreparedDataset, out_dir: str | Path,
                            entry: str = SINGLE) -> list[Path]:
    """One WILDS prediction file per evaluated split of one entry; returns the files written."""
    ids = next((e for e in predictions.entries if e["entry"] == entry), None)
    if ids is None:
        raise KeyError(f"{predictions.path}: no entry {entry!r} (has {[e['entry'] for e in predictions.entries]})")
    dataset = data.info["official_eval"]["dataset"]
    written = []
    for ours, theirs in wilds_splits(data).items():
        if ours not in predictions.splits(entry):
            continue
        order = np.argsort(data.split(ours).metadata["wilds_index"].to_numpy(dtype=np.int64), kind="stable")
        pred = predictions.get(entry, ours).pred[order]
        path = Path(out_dir) / file_name(dataset, theirs, int(ids["seed"]))
        write_text(path, "".join(f"{int(c)}\n" for c in pred))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline wilds-predictions", description=__doc__.splitlines()[0])
    p.add_argument("predictions", help="a predictions.npz of an evaluation stage")
    p.add_argument("--data", required=True, help="the prepared dataset, data/prepared/<dataset>")
    p.add_argument("--out", required=True, help="folder for the CSV files")
    p.add_argument("--entry", default=SINGLE, help="which model of the file (e.g. alpha0.5, greedy_soup)")
    args = p.parse_args(argv)
    files = write_wilds_predictions(PredictionFile(args.predictions), PreparedDataset(args.data), args.out, args.entry)
    for f in files:
        log.info("wrote %s", f)
    if not files:
        raise ValueError(f"{args.predictions}: no split of {args.data} that WILDS scores")
    return 0
