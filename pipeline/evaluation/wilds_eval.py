"""WILDS' official metrics, computed by the real ``wilds`` dataset classes.

The prepared dataset holds the metadata CSVs its WILDS class reads at
construction (``files/wilds/<name>_v<version>/``, copied by
:mod:`pipeline.data.sources.wilds`), so the dataset object is rebuilt here
without any image, and ``ds.eval`` scores predictions exactly as WILDS does:
worst-group accuracy (Waterbirds), worst region / year (FMoW), macro recall and
F1 (iWildCam). Group averages use the pure-torch replacement of
``torch_scatter`` from :mod:`pipeline.compat`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.data.shards import PreparedDataset, SplitData
from pipeline.evaluation.metrics import ALL_DOMAINS


@lru_cache(maxsize=4)
def wilds_dataset(root: str, dataset: str):
    """The WILDS dataset object rebuilt from the copied metadata (cached: Camelyon17's CSV has 455k rows)."""
    from pipeline.data.sources.wilds import load_dataset

    return load_dataset(dataset, Path(root))


def official_results(data: PreparedDataset, split: SplitData, pred: np.ndarray, spec: dict) -> dict[str, float]:
    """Every entry of ``ds.eval`` on one split's predictions (rows picked by ``wilds_index``)."""
    root = data.root / "files" / "wilds"
    if not root.is_dir():
        raise FileNotFoundError(f"{data.root}: official WILDS evaluation needs {root} (the WILDS metadata copied "
                                "by prepare_data); re-run prepare_data for this dataset")
    ds = wilds_dataset(str(root), spec["dataset"])
    idx = torch.as_tensor(split.metadata["wilds_index"].to_numpy(dtype=np.int64))
    results, _ = ds.eval(torch.as_tensor(np.asarray(pred, dtype=np.int64)), ds.y_array[idx], ds.metadata_array[idx])
    return {k: float(v) for k, v in results.items()}


def wilds_rows(data: PreparedDataset, name: str, split: SplitData, pred: np.ndarray, spec: dict) -> list[dict]:
    """Tidy rows (domain ``all``) of the spec's headline WILDS metrics on split ``name``."""
    results = official_results(data, split, pred, spec)
    missing = [m for m in spec["metrics"] if m not in results]
    if missing:
        raise KeyError(f"{data.root}: WILDS {spec['dataset']} eval returned no {missing} "
                       f"(has {sorted(results)[:8]}...)")
    return [{"split": name, "domain": ALL_DOMAINS, "metric": m, "value": results[m], "n": len(split)}
            for m in spec["metrics"]]
