"""CIFAR-10 -> STL-10 / CIFAR-10.1 source: real array formats -> prepared splits, metrics, broken files.

The fabricated copy (tests/fabricate_images.py): 5 train batches of 10 images (one per
class), a test batch of 20, STL-10 train 10 / test 20 (one / two per STL class,
monkey included), CIFAR-10.1 20. Every image's red channel is 20 * CIFAR label plus
a domain offset, so a test can tell that each row holds the right image and label.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_stages import run_dataset_stages
from fabricate_images import RED_OFFSET, fabricate_cifar10, fabricate_cifar_task

from pipeline.data.prepare import prepare
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources.base import MissingDataError
from pipeline.data.sources.cifar import RestrictedUnpickler
from pipeline.evaluation.predict import score_logits

NAME = "c10"
FROG = 6
COUNTS = {"train": 40, "id_val": 10, "id_test": 20, "ood_val": 9 + 10, "ood_test": 18 + 10}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return fabricate_cifar_task(tmp_path / "raw")


def entry(raw: Path, **extra) -> dict:
    """id_val_fraction 0.2: one of the five train images per class."""
    return {"source": "cifar10", "root": str(raw), "storage_size": 32, "id_val_fraction": 0.2, **extra}


def prepare_into(tmp_path: Path, cfg: dict, name: str = NAME) -> PreparedDataset:
    out = tmp_path / "data/prepared" / name
    prepare(name, cfg, str(out))
    return PreparedDataset(out)


def assert_not_prepared(tmp_path: Path) -> None:
    assert not (tmp_path / "data/prepared" / NAME).exists()


def test_end_to_end(tmp_path: Path, raw: Path, monkeypatch) -> None:
    """Prepare, fine-tune, evaluate: split sizes, domains, STL relabelling and the metric rows."""
    data, metrics = run_dataset_stages(tmp_path, NAME, entry(raw), monkeypatch)
    assert data.info["classes"][1] == "automobile" and data.num_classes == 10
    assert {s: len(data.split(s)) for s in data.split_names} == COUNTS
    domains = {s: sorted(set(data.split(s).metadata["domain"])) for s in data.split_names}
    assert domains == {"train": ["cifar10"], "id_val": ["cifar10"], "id_test": ["cifar10"],
                       "ood_val": ["cifar10_1", "stl10"], "ood_test": ["cifar10_1", "stl10"]}
    for s in ("train", "id_val"):
        per_class = 4 if s == "train" else 1
        assert data.split(s).metadata["label"].value_counts().to_dict() == dict.fromkeys(range(10), per_class)
    stl = data.split("ood_test").metadata.query("domain == 'stl10'")
    assert FROG not in set(stl["label"]) and len(set(stl["label"])) == 9    # no frog in STL, monkey dropped
    assert stl["source"].str.startswith("stl10:test:").all() and "stl10:test:7" not in set(stl["source"])  # monkey
    c101 = [set(data.split(s).metadata.query("domain == 'cifar10_1'")["source"]) for s in ("ood_val", "ood_test")]
    assert len(c101[0]) == len(c101[1]) == 10 and not c101[0] & c101[1]
    rows = metrics[metrics["metric"] == "acc"]
    assert set(zip(rows["split"], rows["domain"])) == {
        ("id_val", "all"), ("id_val", "cifar10"), ("id_test", "all"), ("id_test", "cifar10"),
        *[(s, d) for s in ("ood_val", "ood_test") for d in ("all", "stl10", "cifar10_1")]}


def test_pixels_follow_labels_and_orientation(tmp_path: Path, raw: Path) -> None:
    """Each row's image is the one its label and domain say; STL's column-major storage is undone (stored raw:
    lossless, so every pixel can be checked)."""
    data = prepare_into(tmp_path, entry(raw, encoding="raw"))
    ramp = np.arange(32, dtype=np.uint8) * 8
    for name in data.split_names:
        split = data.split(name)
        offsets = split.metadata["domain"].map(RED_OFFSET).to_numpy()
        np.testing.assert_array_equal(split.images.stack()[..., 0].mean(axis=(1, 2)), 20 * split.labels + offsets)
        green, blue = split.images.stack()[..., 1].astype(int), split.images.stack()[..., 2].astype(int)
        assert (np.diff(green, axis=1) > 0).all() and (np.diff(green, axis=2) == 0).all()   # rows go down
        assert (np.diff(blue, axis=2) > 0).all() and (np.diff(blue, axis=1) == 0).all()     # columns go right
    cifar = data.split("id_test").images.stack()
    assert (cifar[:, :, 0, 1] == ramp).all() and (cifar[:, 0, :, 2] == ramp).all()   # 32 px: kept exactly


def test_python_version_matches_binary(tmp_path: Path) -> None:
    """The pickled and the binary CIFAR-10 give the same prepared data."""
    fabricate_cifar_task(tmp_path / "bin", "bin")
    fabricate_cifar_task(tmp_path / "py", "py")
    a, b = (prepare_into(tmp_path, entry(tmp_path / v), name=v) for v in ("bin", "py"))
    assert a.metadata.equals(b.metadata)
    for s in a.split_names:
        np.testing.assert_array_equal(a.split(s).images.stack(), b.split(s).images.stack())


def test_binary_preferred_over_python(tmp_path: Path, raw: Path) -> None:
    """With both versions present the binary one is read: a broken pickle beside it does no harm."""
    fabricate_cifar10(raw, "py")
    (raw / "cifar-10-batches-py/data_batch_1").write_bytes(b"garbage")
    assert len(prepare_into(tmp_path, entry(raw)).split("train")) == 40


def test_metric_values(tmp_path: Path, raw: Path) -> None:
    """STL images predicted frog are wrong; accuracies per OOD domain and pooled, by hand."""
    data = prepare_into(tmp_path, entry(raw))
    split = data.split("ood_test")
    stl = torch.as_tensor((split.metadata["domain"] == "stl10").to_numpy())
    pred = torch.where(stl, FROG, torch.as_tensor(split.labels))                 # CIFAR-10.1 all right
    rows = score_logits(data, {"ood_test": torch.nn.functional.one_hot(pred, 10).float()}).rows
    acc = {r["domain"]: r["value"] for r in rows if r["metric"] == "acc"}
    assert acc == {"all": pytest.approx(10 / 28), "stl10": 0.0, "cifar10_1": 1.0}
    test = data.split("id_test")
    pred = torch.as_tensor(np.where(test.labels < 5, test.labels, 0))          # classes 0-4 right, 5-9 wrong
    rows = score_logits(data, {"id_test": torch.nn.functional.one_hot(pred, 10).float()}).rows
    assert {r["domain"]: r["value"] for r in rows if r["metric"] == "acc"} == {"all": 0.5, "cifar10": 0.5}


@pytest.mark.parametrize("ood, absent, domains", [(["stl10"], "cifar10.1", {"stl10"}),
                                                  (["cifar10_1"], "stl10_binary", {"cifar10_1"})])
def test_one_ood_set(tmp_path: Path, raw: Path, ood: list[str], absent: str, domains: set[str]) -> None:
    """Only the OOD sets asked for are read, so the other may be absent."""
    for path in (raw / absent).iterdir():
        path.unlink()
    (raw / absent).rmdir()
    data = prepare_into(tmp_path, entry(raw, ood=ood))
    assert set(data.split("ood_test").metadata["domain"]) == domains
    with pytest.raises(ValueError, match="imagenet_v2"):
        prepare_into(tmp_path, entry(raw, ood=["imagenet_v2"]), name="other")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"(?s)neither cifar-10-batches-bin/ nor cifar-10-batches-py/.*"
                                               r"nope/cifar-10-batches-bin.*stl10_binary/.*cs\.toronto\.edu"):
        prepare_into(tmp_path, entry(tmp_path / "nope"))
    assert_not_prepared(tmp_path)


@pytest.mark.parametrize("rel", ["cifar-10-batches-bin/data_batch_3.bin", "cifar-10-batches-bin/batches.meta.txt",
                                 "stl10_binary/test_y.bin", "cifar10.1/cifar10.1_v6_labels.npy"])
def test_missing_file(tmp_path: Path, raw: Path, rel: str) -> None:
    (raw / rel).unlink()
    with pytest.raises(MissingDataError, match=rf"(?s)file not found: .*{rel}.*expected layout"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("version, rel, keep, detail", [
    ("bin", "cifar-10-batches-bin/data_batch_2.bin", 3073 * 4 + 100, "truncated CIFAR-10 batch"),
    ("py", "cifar-10-batches-py/data_batch_2", 2000, "unreadable CIFAR-10 python batch"),
    ("bin", "stl10_binary/train_X.bin", 27648 * 3 + 7, "truncated STL-10 images"),
    ("bin", "stl10_binary/test_y.bin", 19, "19 labels for the 20 images"),
    ("bin", "cifar10.1/cifar10.1_v6_data.npy", 500, "unreadable CIFAR-10.1 arrays")])
def test_truncated_file(tmp_path: Path, version: str, rel: str, keep: int, detail: str) -> None:
    raw = fabricate_cifar_task(tmp_path / "raw", version)
    truncate(raw / rel, keep)
    with pytest.raises(MissingDataError, match=rf"(?s){detail}.*{Path(rel).parent}.*expected layout"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


class RunsCommand:
    """A pickle payload that would run a shell command when loaded by a bare ``pickle.load``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    """A tampered batch referencing os.system is refused, and the command never runs."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": RunsCommand(f"touch {marker}"), b"labels": []}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (os|posix|nt)\.system"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    raw = fabricate_cifar_task(tmp_path / "raw", "py")
    (raw / "cifar-10-batches-py/data_batch_4").write_bytes(payload)
    with pytest.raises(MissingDataError, match=r"refusing to load global .*system.*data_batch_4"):
        prepare_into(tmp_path, entry(raw))
    assert not marker.exists()
    assert_not_prepared(tmp_path)


def test_restricted_unpickler_reads_numpy_batches() -> None:
    """What it allows is enough for a real batch: a dict of bytes keys, a uint8 array and a label list."""
    batch = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [3, 1]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        loaded = RestrictedUnpickler(io.BytesIO(pickle.dumps(batch, protocol=protocol)), encoding="bytes").load()
        np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
        assert loaded[b"labels"] == [3, 1]
