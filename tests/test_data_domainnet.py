"""DomainNet source: official split files -> prepared splits and metrics, and every broken-data case.

The fabricated copy (tests/fabricate_images.py) has 3 classes x (4 train + 2 test)
images per domain, with the official labels 0, 307 and 308 (an order that Python's
``sorted`` would not give), so the label handling is checked against the real scheme.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from dataset_stages import metric, run_dataset_stages
from fabricate_images import fabricate_domainnet

from pipeline.data.prepare import prepare
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources.base import CorruptImageError, MissingDataError
from pipeline.evaluation.predict import score_logits

NAME = "dn"
CLASSES = ["aircraft_carrier", "tent", "The_Eiffel_Tower"]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    fabricate_domainnet(tmp_path / "raw", domains=("sketch", "real", "clipart"))
    return tmp_path / "raw"


def entry(raw: Path, **extra) -> dict:
    """Fractions large enough to hold out whole images from 4 train images per class."""
    return {"source": "domainnet", "root": str(raw), "storage_size": 20, "id_val_fraction": 0.25,
            "ood_val_fraction": 0.5, **extra}


def prepare_into(tmp_path: Path, cfg: dict) -> Path:
    out = tmp_path / "data/prepared" / NAME
    prepare(NAME, cfg, str(out))
    return out


def test_end_to_end(tmp_path: Path, raw: Path, monkeypatch) -> None:
    """Sketch -> real through prepare, fine-tune and evaluate: splits, labels, domains and metric rows."""
    data, metrics = run_dataset_stages(tmp_path, NAME, entry(raw), monkeypatch)
    assert data.info["classes"] == CLASSES
    counts = {s: len(data.split(s)) for s in data.split_names}
    assert counts == {"train": 9, "id_val": 3, "id_test": 6, "ood_val": 6, "ood_test": 6}
    for split, domain, per_class in [("train", "sketch", 3), ("id_val", "sketch", 1), ("id_test", "sketch", 2),
                                     ("ood_val", "real", 2), ("ood_test", "real", 2)]:
        meta = data.split(split).metadata
        assert set(meta["domain"]) == {domain} and set(meta["group"]) == {domain}
        assert meta["label"].value_counts().to_dict() == {0: per_class, 1: per_class, 2: per_class}
        # 24 x 30 originals, storage_size 20: the shorter side to 20, the aspect ratio kept
        assert data.split(split).images.stack().shape == (3 * per_class, 20, 25, 3)
    # Label = rank in the official order: the Eiffel Tower's images (official label 308) get label 2.
    test = data.split("id_test").metadata
    assert set(test.loc[test["source"].str.contains("/The_Eiffel_Tower/"), "label"]) == {2}
    # Train and id_val come from sketch_train.txt and never share an image.
    assert not set(data.split("train").metadata["source"]) & set(data.split("id_val").metadata["source"])
    rows = metrics[metrics["metric"] == "acc"]
    assert set(zip(rows["split"], rows["domain"])) == {
        ("id_val", "all"), ("id_val", "sketch"), ("id_test", "all"), ("id_test", "sketch"),
        ("ood_val", "all"), ("ood_val", "real"), ("ood_test", "all"), ("ood_test", "real")}
    assert 0.0 <= metric(metrics, "ood_test", "acc", "real") <= 1.0


def test_metric_values_per_ood_domain(tmp_path: Path, raw: Path) -> None:
    """Two OOD domains: crafted logits give per-domain and pooled accuracies checkable by hand."""
    data = PreparedDataset(prepare_into(tmp_path, entry(raw, ood_domains=["real", "clipart"])))
    split = data.split("ood_test")
    meta = split.metadata
    assert list(meta["domain"]) == ["real"] * 6 + ["clipart"] * 6   # domains in the order given
    pred = torch.as_tensor(split.labels).clone()
    wrong = torch.as_tensor(meta.index[meta["domain"] == "clipart"][:2])
    pred[wrong] = (pred[wrong] + 1) % 3                             # 2 of the 6 clipart images misclassified
    logits = torch.nn.functional.one_hot(pred, 3).float()
    acc = {r["domain"]: r["value"] for r in score_logits(data, {"ood_test": logits}).rows if r["metric"] == "acc"}
    assert acc == {"all": pytest.approx(10 / 12), "real": 1.0, "clipart": pytest.approx(4 / 6)}


def test_class_subset_relabels_in_given_order(tmp_path: Path, raw: Path) -> None:
    """``classes`` keeps only those classes, labelled in the order the user lists them."""
    data = PreparedDataset(prepare_into(tmp_path, entry(raw, classes=["The_Eiffel_Tower", "aircraft_carrier"])))
    assert data.info["classes"] == ["The_Eiffel_Tower", "aircraft_carrier"]
    meta = data.split("id_test").metadata
    assert len(meta) == 4 and "/tent/" not in "".join(meta["source"])
    assert set(meta.loc[meta["source"].str.contains("/The_Eiffel_Tower/"), "label"]) == {0}
    with pytest.raises(ValueError, match="'zebra'"):
        prepare_into(tmp_path, entry(raw, classes=["zebra", "tent"]))


def test_holdout_is_seeded(tmp_path: Path, raw: Path) -> None:
    """The same seed picks the same id_val images; the choice does not depend on the run."""
    from pipeline.data.sources.domainnet import manifest

    def val(seed: int) -> list[str]:
        records = manifest(NAME, entry(raw, seed=seed)).records
        return sorted(records.loc[records["split"] == "id_val", "source"])

    assert val(0) == val(0)
    assert any(val(0) != val(s) for s in range(1, 5))


def assert_not_prepared(tmp_path: Path) -> None:
    assert not (tmp_path / "data/prepared" / NAME).exists()


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"(?s)nope/domainnet.*<domain>_train\.txt.*ai\.bu\.edu"):
        prepare_into(tmp_path, entry(tmp_path / "nope"))
    assert_not_prepared(tmp_path)


def test_missing_split_file(tmp_path: Path, raw: Path) -> None:
    (raw / "domainnet/real_test.txt").unlink()
    with pytest.raises(MissingDataError, match=r"(?s)split file not found: .*real_test\.txt.*expected layout"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def test_missing_class_folder(tmp_path: Path, raw: Path) -> None:
    shutil.rmtree(raw / "domainnet/real/tent")
    with pytest.raises(MissingDataError, match=r"class folder listed in .*real_\w+\.txt not found: .*real/tent"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def test_missing_listed_image(tmp_path: Path, raw: Path) -> None:
    (raw / "domainnet/sketch/tent/sketch_307_000006.jpg").unlink()   # a sketch test image
    with pytest.raises(MissingDataError, match=r"(?s)image listed in .*sketch_test\.txt \(line 4\) not found.*"
                                               r"sketch_307_000006\.jpg.*expected layout"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def test_unused_ood_train_image_may_be_missing(tmp_path: Path, raw: Path) -> None:
    """Only the OOD train images drawn into ood_val are decoded, so only those must exist."""
    from pipeline.data.sources.domainnet import manifest

    used = set(manifest(NAME, entry(raw)).records["source"])
    unused = [p for p in sorted((raw / "domainnet/real").rglob("*.jpg")) if str(p) not in used]
    assert len(unused) == 6
    unused[0].unlink()
    assert len(manifest(NAME, entry(raw)).records) == 30


def test_corrupt_image(tmp_path: Path, raw: Path) -> None:
    bad = raw / "domainnet/sketch/aircraft_carrier/sketch_000_000005.jpg"   # a sketch test image
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*sketch_000_000005\.jpg"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def test_label_disagreeing_with_class_folder(tmp_path: Path, raw: Path) -> None:
    path = raw / "domainnet/real_test.txt"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 5"           # an aircraft_carrier image labelled 5
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MissingDataError, match=r"label 5 disagrees with the class folder 'aircraft_carrier', "
                                               r"labelled 0 at .*sketch_train\.txt:1: .*real_test\.txt:1"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


@pytest.mark.parametrize("line, detail", [("sketch/tent/x.jpg", "malformed line"),
                                          ("real/tent/real_307_000001.jpg 307", "line of domain 'real'")])
def test_malformed_split_file(tmp_path: Path, raw: Path, line: str, detail: str) -> None:
    path = raw / "domainnet/sketch_train.txt"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(MissingDataError, match=rf"{detail}.*sketch_train\.txt:13"):
        prepare_into(tmp_path, entry(raw))
    assert_not_prepared(tmp_path)


def test_bad_domains(tmp_path: Path, raw: Path) -> None:
    with pytest.raises(ValueError, match="exclude the ID domain 'sketch'"):
        prepare_into(tmp_path, entry(raw, ood_domains=["sketch"]))
