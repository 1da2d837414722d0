"""ImageNet -> V2 / R / Sketch / A on a tiny fabricated copy in the real layout.

The pipeline's own stages end to end (splits, labels, domains, class subsets, metric rows),
the 200-class argmax of ImageNet-R and -A checked by hand, V2's index-named folders, and each
missing or broken-data case (clear error naming the path and layout, nothing written).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dataset_stages import broken_data_error, metric, prepare_fails, run_fabricated
from fabricate_imagenet import R_WNIDS, WNIDS, break_imagenet_folders, fabricate_imagenet, write_jpeg

from pipeline.data.sources import imagenet
from pipeline.data.sources.base import MissingDataError
from pipeline.evaluation.predict import score_logits

OOD = ["imagenet_v2", "imagenet_r", "imagenet_sketch", "imagenet_a"]
SIZES = {"train": 32, "id_val": 8, "id_test": 12, "ood_test": 20}   # 4 classes x (8 + 2 train, 3 val); 8+4+4+4


def entry(root: Path, **extra) -> dict:
    return {"source": "imagenet", "root": str(root), "storage_size": 32, "id_val_fraction": 0.2, **extra}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """(PreparedDataset, metrics) of one run of the real stages on the tiny copy with all four variants."""
    return run_fabricated(tmp_path_factory, "imagenet", fabricate_imagenet, entry(Path()))


def test_stages_end_to_end(stages):
    data, metrics = stages
    assert data.info["splits"] == SIZES and data.aliases == {}
    assert data.info["classes"] == WNIDS
    assert data.info["class_subsets"] == {"imagenet_r": [1, 3], "imagenet_a": [0, 2]}
    assert data.split("train").images.stack().shape[1:] == (12, 16, 3)   # not square, not enlarged
    for split in ("train", "id_val", "id_test"):
        meta = data.split(split).metadata
        assert set(meta["domain"]) == {"imagenet"}
        assert np.bincount(meta["label"]).tolist() == [SIZES[split] // 4] * 4   # stratified, every class
    ood = data.split("ood_test").metadata
    assert ood["domain"].tolist() == ["imagenet_v2"] * 8 + ["imagenet_r"] * 4 + ["imagenet_sketch"] * 4 \
        + ["imagenet_a"] * 4
    assert ood["label"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] + [1, 1, 3, 3] + [0, 1, 2, 3] + [0, 0, 2, 2]
    for split in ("id_val", "id_test", "ood_test"):
        assert 0.0 <= metric(metrics, split, "acc") <= 1.0
    for domain in OOD:
        assert 0.0 <= metric(metrics, "ood_test", "acc", domain) <= 1.0
    assert set(metrics.loc[metrics["split"] == "ood_test", "domain"]) == {"all", *OOD}
    assert "ood_val" not in set(metrics["split"]) and "train" not in set(metrics["split"])


def test_r_and_a_scored_over_their_200_classes(stages):
    """R and A: argmax over their classes only (as their papers count); V2 and Sketch: over all classes.

    The true class gets logit 5. R (subset {1, 3}): class 0 gets 9 on every row, outside the subset,
    so the global argmax is always wrong but the subset argmax is right, except one row whose other
    subset class gets 6 -> 3/4 (global argmax would give 0/4). A (subset {0, 2}): class 2 gets 9,
    inside the subset, so the two rows labelled 0 are wrong -> 2/4. V2: 2 of 8 rows get a wrong
    class at 9 -> 6/8. Sketch: 1 of 4 -> 3/4.
    """
    data, _ = stages
    meta = data.split("ood_test").metadata
    labels, domains = meta["label"].to_numpy(), meta["domain"].to_numpy()
    logits = torch.zeros(len(meta), 4)
    logits[torch.arange(len(meta)), torch.as_tensor(labels)] = 5.0
    r_rows, a_rows = np.flatnonzero(domains == "imagenet_r"), np.flatnonzero(domains == "imagenet_a")
    logits[r_rows, 0] = 9.0                      # outside R's subset: ignored
    logits[r_rows[0], 3 if labels[r_rows[0]] == 1 else 1] = 6.0
    logits[a_rows, 2] = 9.0                      # inside A's subset: wins over label 0 rows
    v2_wrong = np.flatnonzero(domains == "imagenet_v2")[:2]
    logits[v2_wrong, (labels[v2_wrong] + 1) % 4] = 9.0
    sketch_rows = np.flatnonzero(domains == "imagenet_sketch")
    logits[sketch_rows[0], 1 if labels[sketch_rows[0]] != 1 else 0] = 9.0
    result = score_logits(data, {"ood_test": logits})
    rows = {r["domain"]: (r["value"], r["n"]) for r in result.rows if r["metric"] == "acc"}
    # confidence too is over the subset: R's rows with logits (5, 0) on its two classes -> softmax 1/(1+e^-5)
    conf = result.predictions["ood_test"].confidence
    assert conf[r_rows[1:]] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-5)
    assert conf[r_rows[0]] == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-5)   # 6 against 5
    assert rows["imagenet_r"] == (pytest.approx(3 / 4), 4)
    assert rows["imagenet_a"] == (pytest.approx(2 / 4), 4)
    assert rows["imagenet_v2"] == (pytest.approx(6 / 8), 8)
    assert rows["imagenet_sketch"] == (pytest.approx(3 / 4), 4)
    assert rows["all"] == (pytest.approx((3 + 2 + 6 + 3) / 20), 20)
    assert labels[r_rows].tolist() == [1, 1, 3, 3] and labels[a_rows].tolist() == [0, 0, 2, 2]


def test_v2_folders_are_indices_not_sorted_names(tmp_path):
    """With 12 classes, folder "10" must be class 10 (a string sort would put it third)."""
    wnids = [f"n{i:08d}" for i in range(12)]
    raw = fabricate_imagenet(tmp_path / "raw", wnids, variants=("imagenet_v2",))
    records = imagenet.manifest("inet", entry(raw, ood=["imagenet_v2"])).records
    v2 = records[records["domain"] == "imagenet_v2"]
    assert [int(Path(s).parent.name) for s in v2["source"]] == v2["label"].tolist()
    assert v2["label"].tolist() == sorted(v2["label"].tolist()) and set(v2["label"]) == set(range(12))


def test_class_names_and_variant_choice(tmp_path):
    """Names come from LOC_synset_mapping.txt; only the requested variants are read (others may be absent)."""
    raw = fabricate_imagenet(tmp_path / "raw", variants=("imagenet_r",), names=True)
    m = imagenet.manifest("inet", entry(raw, ood=["imagenet_r"]))
    assert m.classes == [f"class {c}, synonym {c}" for c in range(4)]
    assert m.info == {"class_subsets": {"imagenet_r": [WNIDS.index(w) for w in R_WNIDS]}}
    assert set(m.records["domain"]) == {"imagenet", "imagenet_r"} and "ood_val" not in set(m.records["split"])
    with pytest.raises(ValueError, match="ood must be a non-empty subset"):
        imagenet.manifest("inet", entry(raw, ood=["objectnet"]))


def fifty_per_class(tmp_path: Path) -> Path:
    """Two classes of 50 train images (and one val image each), with ImageNet-R."""
    raw = tmp_path / "raw"
    for c, wnid in enumerate(WNIDS[:2]):
        for i in range(50):
            write_jpeg(raw / "imagenet/train" / wnid / f"{i}.JPEG", i)
        write_jpeg(raw / "imagenet/val" / wnid / "v.JPEG", c)
    write_jpeg(raw / "imagenet-r" / WNIDS[0] / "r.jpg", 0)
    return raw


def test_default_holdout_is_two_percent(tmp_path):
    """Model Soups' ImageNet2p: 2% of each class (here 50 images per class -> 1)."""
    raw = fifty_per_class(tmp_path)
    split = imagenet.manifest("inet", {"root": str(raw), "ood": ["imagenet_r"]}).records["split"]
    assert (split == "id_val").sum() == 2 and (split == "train").sum() == 98


def _break(raw: Path, case: str) -> Path:
    """Break the fabricated copy; returns the path the error must name."""
    missing = break_imagenet_folders(raw, case, WNIDS[3])
    if missing is not None:
        return missing
    if case == "no_variant":
        shutil.rmtree(raw / "imagenet-a")
        return raw / "imagenet-a"
    if case == "variant_wnid_not_imagenet":
        write_jpeg(raw / "imagenet-r/n09999999/x.jpg", 0)
        return raw / "imagenet" / "train" / "n09999999"
    if case == "v2_index_out_of_range":
        write_jpeg(raw / "imagenetv2-matched-frequency-format-val/4/x.jpeg", 0)
        return raw / "imagenetv2-matched-frequency-format-val" / "4"
    bad = min((raw / "imagenet-r" / R_WNIDS[1]).iterdir())
    bad.write_bytes(b"\xff\xd8 not really a JPEG")
    return bad


@pytest.mark.parametrize("case", ["no_root", "no_val", "val_lacks_class", "no_variant", "variant_wnid_not_imagenet",
                                  "v2_index_out_of_range", "corrupt_image"])
def test_missing_or_broken_data(tmp_path, case):
    raw = fabricate_imagenet(tmp_path / "raw")
    missing = _break(raw, case)
    error = broken_data_error(case)
    text = prepare_fails("inet", entry(raw), tmp_path / "data/prepared/inet", missing, error)
    if error is MissingDataError:
        assert text.startswith("inet: ") and "expected layout" in text and "imagenet-sketch/sketch/<wnid>" in text
        assert "image-net.org" in text


def test_a_wnid_error_says_which_variant(tmp_path):
    raw = fabricate_imagenet(tmp_path / "raw")
    write_jpeg(raw / "imagenet-a/n09999999/x.jpg", 0)
    with pytest.raises(MissingDataError, match=r"imagenet_a class n09999999 .* is not an ImageNet class"):
        imagenet.manifest("inet", entry(raw))


def test_id_val_need_not_be_held_out(tmp_path):
    """id_val_held_out: false (WiSE-FT trains on 100% of ImageNet): train keeps every image and id_val is the same
    seeded sample, copied, only to monitor training; info.json says so."""
    raw = fifty_per_class(tmp_path)
    held = imagenet.manifest("inet", {"root": str(raw), "ood": ["imagenet_r"]})
    whole = imagenet.manifest("inet", {"root": str(raw), "ood": ["imagenet_r"], "id_val_held_out": False})
    rec = whole.records
    assert (rec["split"] == "train").sum() == 100 and (rec["split"] == "id_val").sum() == 2
    val = rec.loc[rec["split"] == "id_val", ["source", "label"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(val, held.records.loc[held.records["split"] == "id_val", ["source", "label"]]
                                  .reset_index(drop=True))
    assert set(val["source"]) <= set(rec.loc[rec["split"] == "train", "source"])
    assert whole.info.get("id_val_held_out") is False and "id_val_held_out" not in held.info
    assert held.records[held.records["split"] == "train"].reset_index(drop=True).equals(
        rec[(rec["split"] == "train") & ~rec["source"].isin(val["source"])].reset_index(drop=True))
