"""Run one real dataset through the pipeline's own stages, as a test would on a cluster.

``run_dataset_stages`` writes a params.yaml holding the dataset entry and a tiny
random-init timm model, then calls each stage's ``main``: prepare_data, backbone, a short
fine-tune (ft_adamw, one epoch of batches of 4), evaluate. It returns the prepared dataset and
the tidy metrics of the run.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_params

from pipeline.data.prepare import prepare
from pipeline.data.sources.base import CorruptImageError, MissingDataError

MODEL = "test_efficientnet"


def dataset_params(name: str, entry: dict, batch_size: int = 4) -> dict:
    cfg = tiny_params(model=MODEL, weights="none")
    cfg["experiment"] = {"datasets": [name], "models": ["tiny"], "methods": ["ft_adamw"], "seeds": [0]}
    cfg["datasets"] = {name: entry}
    cfg["finetune"].update(epochs=1, batch_size=batch_size, warmup_epochs=0)
    cfg["wise_ft"] = {"alphas": [0.0, 1.0], "methods": ["ft_adamw"]}
    cfg["soups"] = {"methods": ["ft_adamw"]}
    return cfg


def run_dataset_stages(workdir: Path, name: str, entry: dict, monkeypatch, batch_size: int = 4):
    """(PreparedDataset, metrics DataFrame) of one fine-tuning run on dataset ``name``."""
    from pipeline.data.shards import PreparedDataset
    from pipeline.evaluation.metrics import read_tidy
    from pipeline.stages.backbone import main as backbone_main
    from pipeline.stages.evaluate import main as evaluate_main
    from pipeline.stages.finetune import main as finetune_main
    from pipeline.stages.prepare_data import main as prepare_main

    (workdir / "params.yaml").write_text(yaml.safe_dump(dataset_params(name, entry, batch_size), sort_keys=False))
    monkeypatch.chdir(workdir)
    run = ["--dataset", name, "--model", "tiny", "--method", "ft_adamw", "--hp", "epochs1_lr0.0003", "--seed", "0"]
    assert prepare_main(["--dataset", name]) == 0
    assert backbone_main(["--model", "tiny"]) == 0
    assert finetune_main(run) == 0
    assert evaluate_main(run) == 0
    data = PreparedDataset(workdir / "data/prepared" / name)
    metrics = read_tidy([str(workdir / f"results/{name}/tiny/ft_adamw/epochs1_lr0.0003/seed0/metrics.csv")])
    return data, metrics


def metric(metrics: pd.DataFrame, split: str, name: str, domain: str = "all") -> float:
    hit = metrics[(metrics["split"] == split) & (metrics["metric"] == name) & (metrics["domain"] == domain)]
    assert len(hit) == 1, f"{split}/{name}/{domain}: {len(hit)} rows"
    return float(hit["value"].iloc[0])


def run_fabricated(tmp_path_factory, name: str, fabricate, entry: dict):
    """``run_dataset_stages`` on a tiny copy written by ``fabricate(raw_root) -> raw_root`` (module fixtures)."""
    import pytest

    work = tmp_path_factory.mktemp(name)
    raw = fabricate(work / "raw")
    with pytest.MonkeyPatch.context() as mp:
        return run_dataset_stages(work, name, {**entry, "root": str(raw)}, mp)


def prepare_inputs(root: Path, cfg: dict, dataset: str = "digits", model: str = "tiny") -> None:
    """Write ``cfg`` as root/params.yaml and run prepare_data and backbone there (a fine-tune's inputs)."""
    import os

    from pipeline.stages.backbone import main as backbone_main
    from pipeline.stages.prepare_data import main as prepare_main

    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert prepare_main(["--dataset", dataset]) == 0
        assert backbone_main(["--model", model]) == 0
    finally:
        os.chdir(cwd)


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def prepare_fails(name: str, entry: dict, out: Path, culprit: Path, error: type[Exception]) -> str:
    """Run prepare_data on broken data: it must raise ``error`` naming ``culprit`` and leave nothing behind."""
    with pytest.raises(error, match=re.escape(str(culprit))) as info:
        prepare(name, entry, str(out))
    assert not out.exists() and not list(out.parent.glob(f".tmp-{name}*"))
    return str(info.value)


def broken_data_error(case: str) -> type[Exception]:
    return CorruptImageError if case == "corrupt_image" else MissingDataError
