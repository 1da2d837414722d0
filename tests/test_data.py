"""The embedded digits task and the prepared-shard format."""
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.data.digits import build_digits_task
from pipeline.data.images import Storage
from pipeline.data.shards import ImageStore, PreparedDataset, write_prepared
from pipeline.io import atomic_path
from pipeline.stages.prepare_data import main as prepare_main


@pytest.fixture(scope="module")
def task():
    return build_digits_task(image_size=32, train_per_class=5, val_per_class=2, test_per_class=2,
                             ood_per_class=4, seed=0)


def test_splits_shapes_and_domains(task):
    splits, info = task
    assert set(splits) == {"train", "id_val", "id_test", "ood_val", "ood_test"}
    for images, meta in splits.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert len(images) == len(meta)
    assert len(splits["train"][1]) == 50 and splits["train"][1]["label"].value_counts().eq(5).all()
    assert set(splits["ood_test"][1]["domain"]) == {"mnist_m", "sklearn_digits"}
    assert set(splits["id_test"][1]["domain"]) == {"mnist"}
    assert info["ood_splits"] == ["ood_val", "ood_test"]


def test_no_image_in_two_splits(task):
    splits, _ = task
    seen = {}
    for name, (_, meta) in splits.items():
        for src in meta["source"]:
            # MNIST-M digits are MNIST digits: the underlying MNIST index must be unique too.
            key = src.replace("mnist_m:", "mnist:")
            assert key not in seen, f"{src} in {name} and {seen[key]}"
            seen[key] = name


def test_deterministic_and_seed_sensitive(task):
    again, _ = build_digits_task(image_size=32, train_per_class=5, val_per_class=2, test_per_class=2,
                                 ood_per_class=4, seed=0)
    other, _ = build_digits_task(image_size=32, train_per_class=5, val_per_class=2, test_per_class=2,
                                 ood_per_class=4, seed=1)
    splits, _ = task
    assert np.array_equal(splits["ood_test"][0], again["ood_test"][0])
    assert not np.array_equal(splits["train"][0], other["train"][0])


def test_mnist_m_differs_from_plain_digits(task):
    splits, _ = task
    images, meta = splits["ood_test"]
    mm = images[meta["domain"].to_numpy() == "mnist_m"]
    # coloured backgrounds: channels differ and few pixels stay black
    assert (mm[..., 0] != mm[..., 1]).mean() > 0.3
    assert (mm.max(-1) == 0).mean() < 0.2


def test_too_many_requested(task):
    with pytest.raises(ValueError, match="requested per class"):
        build_digits_task(32, 400, 100, 100, 10, 0)


def test_prepared_roundtrip(tmp_path, task):
    splits, info = task
    write_prepared(tmp_path / "ds", splits, info, Storage(32, "raw"))
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.num_classes == 10 and ds.split_names == list(splits)
    s = ds.split("ood_test")
    assert isinstance(s.images, ImageStore) and isinstance(s.images.data, np.memmap)
    assert np.array_equal(s.images.stack(), splits["ood_test"][0])   # raw: lossless
    assert list(s.labels) == list(splits["ood_test"][1]["label"])
    with pytest.raises(KeyError, match="not in"):
        ds.split("nope")


def test_missing_prepared_dataset_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"info.json is missing.*prepare_data"):
        PreparedDataset(tmp_path / "absent")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, task):
    splits, info = task
    bad = dict(splits, broken=(splits["train"][0][:3], splits["train"][1]))  # 3 images, 50 rows
    with pytest.raises(ValueError, match="3 images but 50"):
        write_prepared(tmp_path / "ds", bad, info, Storage(32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_prepare_stage_main(tiny_workdir):
    assert prepare_main(["--dataset", "digits"]) == 0
    info = json.loads((tiny_workdir / "data/prepared/digits/info.json").read_text())
    assert info["splits"]["train"] == 60 and len(info["config_hash"]) == 12
    assert info["storage"] == {"size": 32, "encoding": "raw", "quality": 90} and info["format"] == 2
    meta = pd.read_csv(tiny_workdir / "data/prepared/digits/metadata.csv")
    assert list(meta.columns) == ["split", "index", "label", "domain", "group", "source"]
