"""Per-example predictions: calibration from torchmetrics, the compact file, WILDS-style prediction files."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fabricate_wilds import FABRICATORS
from torchmetrics.functional.classification import multiclass_calibration_error

from pipeline.evaluation.predict import score_logits
from pipeline.evaluation.predictions import (
    PredictionFile,
    SplitPredictions,
    calibration_rows,
    entry_ids,
    save_predictions,
)


def random_predictions(n: int = 600, k: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(1), torch.randint(0, k, (n,), generator=g))
    domains = np.where(np.arange(n) % 3 == 0, "b", "a")
    return logits, labels, domains


def test_ece_is_torchmetrics_top_label_calibration_error_per_domain():
    logits, labels, domains = random_predictions()
    prob = logits.softmax(1)
    conf, pred = prob.max(1)
    p = SplitPredictions(pred.numpy(), conf.numpy(), (pred == labels).numpy(), domains)
    rows = {r["domain"]: r for r in calibration_rows(p, "ood_test")}
    assert set(rows) == {"all", "a", "b"} and all(r["metric"] == "ece" for r in rows.values())
    assert rows["all"]["value"] == pytest.approx(float(multiclass_calibration_error(prob, labels, 7, n_bins=15)))
    b = torch.as_tensor(domains == "b")
    assert rows["b"]["value"] == pytest.approx(float(multiclass_calibration_error(prob[b], labels[b], 7, n_bins=15)))
    assert rows["b"]["n"] == int(b.sum())
    # by hand: 15 equal bins of confidence, |accuracy - confidence| weighted by the bin's share
    bins = np.minimum((conf.numpy() * 15).astype(int), 14)
    correct = p.correct.astype(float)
    ece = sum(abs(correct[bins == i].mean() - conf.numpy()[bins == i].mean()) * (bins == i).mean()
              for i in range(15) if (bins == i).any())
    assert rows["all"]["value"] == pytest.approx(ece, abs=1e-6)


def test_file_round_trips_without_pickle_and_is_byte_identical(tmp_path: Path):
    logits, labels, domains = random_predictions()
    conf, pred = logits.softmax(1).max(1)
    p = SplitPredictions(pred.numpy(), conf.numpy(), (pred == labels).numpy(), domains)
    entries = {"alpha0.5": (entry_ids("d", "m", "ft", "lr1", 2, 0.5), {"ood_test": p}),
               "alpha1": (entry_ids("d", "m", "ft", "lr1", 2, 1.0), {"ood_test": p})}
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_predictions(a, entries)
    save_predictions(b, entries)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with zipfile.ZipFile(a) as zf:   # every member stamped with one fixed date
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    f = PredictionFile(a)            # np.load(allow_pickle=False) inside
    assert [e["entry"] for e in f.entries] == ["alpha0.5", "alpha1"] and f.entries[0]["alpha"] == 0.5
    got = f.get("alpha1", "ood_test")
    assert (got.pred == p.pred).all() and (got.correct == p.correct).all() and (got.domains == domains).all()
    assert got.confidence.dtype == np.float16 and np.allclose(got.confidence, p.confidence, atol=1e-3)
    assert f.splits("alpha0.5") == ["ood_test"]
    # about 4 bytes per example and model: compact enough for ImageNet-sized splits
    assert a.stat().st_size < 2 * 600 * 8


def test_wilds_prediction_files_score_as_wilds_does(tmp_path: Path):
    """The files a user submits hold one class per line in WILDS' subset order; WILDS' eval agrees with ours."""
    from pipeline.data.prepare import prepare
    from pipeline.data.shards import PreparedDataset
    from pipeline.evaluation.submission import main as submission_main
    from pipeline.evaluation.wilds_eval import wilds_dataset

    FABRICATORS["fmow"](tmp_path / "raw")
    prepare("fmow", {"source": "fmow", "root": str(tmp_path / "raw"), "storage_size": 32}, str(tmp_path / "fmow"))
    data = PreparedDataset(tmp_path / "fmow")
    splits = [s for s in data.split_names if s != "train"]
    g = torch.Generator().manual_seed(1)
    logits = {s: torch.randn(len(data.split(data.physical(s))), data.num_classes, generator=g) for s in splits}
    result = score_logits(data, logits)
    save_predictions(tmp_path / "p.npz", {"model": (entry_ids("fmow", "m", "ft", "lr1", 3), result.predictions)})

    out = tmp_path / "submission"
    assert submission_main([str(tmp_path / "p.npz"), "--data", str(data.root), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"fmow_split:{s}_seed:3_epoch:best_pred.csv" for s in ("id_test", "id_val", "test", "val")]
    ds = wilds_dataset(str(data.root / "files" / "wilds"), "fmow")
    ours = {s: {r["metric"]: r["value"] for r in result.rows if r["split"] == s and r["domain"] == "all"}
            for s in splits}
    for wilds_split, our_split in (("test", "ood_test"), ("val", "ood_val"), ("id_test", "id_test")):
        pred = torch.as_tensor(np.loadtxt(out / f"fmow_split:{wilds_split}_seed:3_epoch:best_pred.csv", dtype=np.int64))
        subset = ds.get_subset(wilds_split)
        assert len(pred) == len(subset)
        metrics, _ = ds.eval(pred, ds.y_array[subset.indices], ds.metadata_array[subset.indices])
        assert metrics["acc_avg"] == pytest.approx(ours[our_split]["acc"])
        assert metrics["acc_worst_region"] == pytest.approx(ours[our_split]["acc_worst_region"])


def test_not_a_wilds_dataset_is_one_line(tmp_path: Path):
    from pipeline.evaluation.submission import wilds_splits

    class Fake:
        info = {"official_eval": None}
        root = Path("data/prepared/digits")

    with pytest.raises(ValueError, match="data/prepared/digits: not a WILDS dataset"):
        wilds_splits(Fake())
