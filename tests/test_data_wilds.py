"""The WILDS sources and their official metrics, on tiny fabricated copies in the real layout.

Per dataset: the pipeline's own stages end to end (splits, labels, domains and
the official metric rows), official metric values on crafted predictions checked
by hand, and each missing or broken-data case (clear error, nothing written).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_stages import metric, prepare_fails, run_dataset_stages
from fabricate_wilds import FABRICATORS
from sklearn.metrics import f1_score

from pipeline.data.prepare import prepare
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources.base import CorruptImageError, MissingDataError
from pipeline.evaluation.predict import score_logits

pytestmark = pytest.mark.filterwarnings("ignore:Minimum metadata value for CombinatorialGrouper")

EXPECTED = {  # split sizes, aliases, official metrics and the splits they are reported on
    "waterbirds": ({"train": 8, "id_val": 8, "id_test": 8}, {"ood_test": "id_test"},
                   ["adj_acc_avg", "acc_wg"], ["id_val", "id_test", "ood_test"]),
    "camelyon17": ({"train": 6, "id_val": 6, "ood_val": 4, "ood_test": 4}, {"id_test": "id_val"},
                   ["acc_avg"], ["id_val", "id_test", "ood_val", "ood_test"]),
    "fmow": ({"train": 8, "id_val": 3, "id_test": 3, "ood_val": 3, "ood_test": 6}, {},
             ["acc_avg", "acc_worst_region", "acc_worst_year"], ["id_val", "id_test", "ood_val", "ood_test"]),
    "iwildcam": ({"train": 8, "id_val": 4, "id_test": 4, "ood_val": 4, "ood_test": 6}, {},
                 ["acc_avg", "recall-macro_all", "F1-macro_all"], ["id_val", "id_test", "ood_val", "ood_test"]),
}
DOMAINS = {
    "waterbirds": {"train": {"landbird_land", "landbird_water", "waterbird_land", "waterbird_water"}},
    "camelyon17": {"train": {"hospital_0", "hospital_3", "hospital_4"}, "ood_val": {"hospital_1"},
                   "ood_test": {"hospital_2"}},
    "fmow": {"ood_test": {"Americas", "Europe", "Asia", "Other"}},
    "iwildcam": {"ood_test": {"iwildcam"}},
}

TRAIN_LABELS = {"waterbirds": {0, 1}, "camelyon17": {0, 1}, "fmow": {0, 6, 12, 61}, "iwildcam": {0, 1, 2, 3}}


def entry(name: str, root: Path) -> dict:
    return {"source": name, "root": str(root), "storage_size": 32}


def prepared(tmp_path: Path, name: str) -> PreparedDataset:
    """Fabricate, prepare, then delete the raw copy: official eval must need only the prepared files."""
    raw = tmp_path / "raw"
    FABRICATORS[name](raw)
    out = tmp_path / "data/prepared" / name
    prepare(name, entry(name, raw), str(out))
    shutil.rmtree(raw)
    return PreparedDataset(out)


def one_hot(pred: np.ndarray, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(pred), n_classes).float()


def rows_of(data: PreparedDataset, split: str, pred: np.ndarray) -> dict[str, float]:
    """{metric: value} of the domain-``all`` rows for the crafted predictions ``pred``."""
    rows = score_logits(data, {split: one_hot(pred, data.num_classes)}).rows
    return {r["metric"]: r["value"] for r in rows if r["domain"] == "all"}


@pytest.mark.parametrize("name", list(FABRICATORS))
def test_stages_end_to_end(tmp_path, monkeypatch, name):
    raw = tmp_path / "raw"
    FABRICATORS[name](raw)
    data, metrics = run_dataset_stages(tmp_path, name, entry(name, raw), monkeypatch)
    sizes, aliases, keys, splits = EXPECTED[name]
    assert data.info["splits"] == sizes and data.aliases == aliases
    assert data.info["official_eval"] == {"kind": "wilds", "dataset": name, "metrics": keys, "splits": splits}
    assert data.split("train").images.stack().shape[1:] == (12, 12, 3)   # smaller than storage_size: kept as is
    for split, domains in DOMAINS[name].items():
        assert set(data.split(split).metadata["domain"]) == domains
    assert set(data.split("train").labels) == TRAIN_LABELS[name]
    for split in splits:
        for key in keys:
            assert 0.0 <= metric(metrics, split, key) <= 1.0
        assert metric(metrics, split, "acc") >= 0.0
    assert not metrics[(metrics["split"] == "train") & metrics["metric"].isin(keys)].size


def test_fmow_indices_skip_sequestered_rows(tmp_path):
    """wilds_index counts rows without 'seq'; the image file keeps the row number of rgb_metadata.csv."""
    raw = tmp_path / "raw"
    FABRICATORS["fmow"](raw)
    out = tmp_path / "out"
    prepare("fmow", entry("fmow", raw), str(out))
    meta = PreparedDataset(out).split("ood_test").metadata
    assert meta["wilds_index"].tolist() == list(range(18, 24))
    assert [Path(s).name for s in meta["source"]] == [f"rgb_img_{i}.png" for i in range(19, 25)]
    from wilds.datasets.fmow_dataset import categories

    assert PreparedDataset(out).info["classes"] == categories


def test_waterbirds_worst_group_by_hand(tmp_path):
    data = prepared(tmp_path, "waterbirds")
    meta = data.split("id_test").metadata
    pred = meta["label"].to_numpy().copy()
    wrong = np.flatnonzero(meta["group"] == "waterbird_land")[0]   # 1 of the 2 waterbirds on land
    pred[wrong] = 1 - pred[wrong]
    expected_adj = (3498 * 1 + 184 * 1 + 56 * 0.5 + 1057 * 1) / (3498 + 184 + 56 + 1057)
    for split in ("id_test", "ood_test"):
        got = rows_of(data, split, pred)
        assert got["acc"] == pytest.approx(7 / 8)
        assert got["acc_wg"] == pytest.approx(0.5)
        assert got["adj_acc_avg"] == pytest.approx(expected_adj)


def test_camelyon17_accuracy_by_hand(tmp_path):
    data = prepared(tmp_path, "camelyon17")
    pred = data.split("ood_test").labels.copy()
    pred[0] = 1 - pred[0]
    assert rows_of(data, "ood_test", pred)["acc_avg"] == pytest.approx(3 / 4)
    assert rows_of(data, "id_test", data.split("id_val").labels)["acc_avg"] == 1.0


def test_fmow_worst_region_and_year_by_hand(tmp_path):
    """ood_test: Americas 2016 x2, Europe 2017 x2, Asia 2016, Other 2017; wrong: one Europe row and Other."""
    data = prepared(tmp_path, "fmow")
    meta = data.split("ood_test").metadata
    pred = meta["label"].to_numpy().copy()
    wrong = [np.flatnonzero(meta["domain"] == "Europe")[0], np.flatnonzero(meta["domain"] == "Other")[0]]
    pred[wrong] = (pred[wrong] + 1) % data.num_classes
    got = rows_of(data, "ood_test", pred)
    assert got["acc_avg"] == pytest.approx(4 / 6)
    assert got["acc_worst_region"] == pytest.approx(0.5)   # Europe; "Other" (0.0) is excluded by WILDS
    assert got["acc_worst_year"] == pytest.approx(1 / 3)   # 2017: Europe right, Europe wrong, Other wrong


def test_iwildcam_macro_f1_by_hand(tmp_path):
    """y = 0 1 2 3 0 1, pred = 0 1 2 0 1 1: per-class F1 .5, .8, 1, 0; recall .5, 1, 1, 0."""
    data = prepared(tmp_path, "iwildcam")
    y = data.split("ood_test").labels
    assert y.tolist() == [0, 1, 2, 3, 0, 1]
    pred = np.array([0, 1, 2, 0, 1, 1])
    got = rows_of(data, "ood_test", pred)
    assert got["acc_avg"] == pytest.approx(4 / 6)
    assert got["recall-macro_all"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert got["F1-macro_all"] == pytest.approx((0.5 + 0.8 + 1 + 0) / 4)
    assert got["F1-macro_all"] == pytest.approx(f1_score(y, pred, average="macro"))


def _image(data_dir: Path) -> Path:
    return next(p for p in sorted(data_dir.rglob("*")) if p.suffix in (".png", ".jpg"))


BREAKAGES = {  # what to break -> the path the error must name (relative to the data dir) and the error type
    "no_root": (None, MissingDataError),
    "no_release": ("RELEASE_v*.txt", MissingDataError),
    "no_metadata": ("*metadata.csv", MissingDataError),
    "missing_image": ("<image>", FileNotFoundError),
    "corrupt_image": ("<image>", CorruptImageError),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
@pytest.mark.parametrize("name", list(FABRICATORS))
def test_missing_or_broken_data(tmp_path, name, case):
    raw = tmp_path / "raw"
    pattern, error = BREAKAGES[case]
    if case == "no_root":
        missing = raw
    else:
        data_dir = FABRICATORS[name](raw)
        missing = _image(data_dir) if pattern == "<image>" else next(data_dir.glob(pattern))
        if case == "corrupt_image":
            missing.write_bytes(b"not an image at all")
        else:
            missing.unlink()
    text = prepare_fails(name, entry(name, raw), tmp_path / "data/prepared" / name, missing, error)
    if error is MissingDataError:
        assert "expected layout" in text and "wilds.stanford.edu" in text
        assert f"{name}_v" in text
    assert case != "no_root" or not raw.exists()  # wilds would have created the root


@pytest.mark.parametrize("name,folder", [("camelyon17", "patches"), ("fmow", "images"), ("iwildcam", "train")])
def test_missing_image_folder(tmp_path, name, folder):
    shutil.rmtree(FABRICATORS[name](tmp_path / "raw") / folder)
    with pytest.raises(MissingDataError, match=r"image folder missing: .*" + re.escape(folder)):
        prepare(name, entry(name, tmp_path / "raw"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_metadata_without_needed_columns(tmp_path):
    data_dir = FABRICATORS["waterbirds"](tmp_path / "raw")
    csv = data_dir / "metadata.csv"
    csv.write_text(csv.read_text().replace("place,", "background,", 1))
    with pytest.raises(MissingDataError, match=r"lacks columns \['place'\].*metadata.csv"):
        prepare("waterbirds", entry("waterbirds", tmp_path / "raw"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
