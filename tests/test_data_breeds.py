"""BREEDS Living-17 / Entity-30: the shipped class lists, and a tiny custom task in the real ImageNet layout.

The pipeline's own stages end to end on a 2-superclass list placed at ``<root>/breeds/``
(splits, labels, source/target domains, subclass groups, metric rows), accuracy checked by
hand, the shipped lists' shape and provenance, and each missing or broken-data case.
"""
from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from dataset_stages import broken_data_error, metric, prepare_fails, run_fabricated
from fabricate_imagenet import break_imagenet_folders, fabricate_imagenet, write_breeds_list

from pipeline.data.prepare import prepare
from pipeline.data.sources import breeds
from pipeline.data.sources.base import MissingDataError
from pipeline.evaluation.predict import score_logits

W = [f"n0200000{i}" for i in range(6)]
TASK = [{"name": "alpha", "source": [W[0], W[1]], "target": [W[2]]},
        {"name": "beta", "source": [W[3]], "target": [W[4], W[5]]}]
# 10 train + 3 val images per subclass; 20% of each subclass's train images held out (2).
SIZES = {"train": 24, "id_val": 6, "id_test": 9, "ood_val": 6, "ood_test": 9}
LIVING17 = ["salamander", "turtle", "lizard", "snake", "spider", "grouse", "parrot", "crab", "dog", "wolf", "fox",
            "domestic cat", "bear", "beetle", "butterfly", "ape", "monkey"]   # as listed by Santurkar et al. 2021


def tiny(root: Path, task: str = "living17") -> Path:
    fabricate_imagenet(root, W, variants=())
    write_breeds_list(root, task, TASK)
    return root


def entry(root: Path, task: str = "living17") -> dict:
    return {"source": task, "root": str(root), "storage_size": 32, "id_val_fraction": 0.2, "ood_val_fraction": 0.2}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return run_fabricated(tmp_path_factory, "living17", tiny, entry(Path()))


def test_stages_end_to_end(stages):
    data, metrics = stages
    assert data.info["splits"] == SIZES and data.info["classes"] == ["alpha", "beta"]
    assert "class_subsets" not in data.info
    expect = {"train": ("source", {W[0]: 8, W[1]: 8, W[3]: 8}), "id_val": ("source", {W[0]: 2, W[1]: 2, W[3]: 2}),
              "id_test": ("source", {W[0]: 3, W[1]: 3, W[3]: 3}), "ood_val": ("target", {W[2]: 2, W[4]: 2, W[5]: 2}),
              "ood_test": ("target", {W[2]: 3, W[4]: 3, W[5]: 3})}
    for split, (domain, per_wnid) in expect.items():
        meta = data.split(split).metadata
        assert set(meta["domain"]) == {domain}
        assert meta["group"].value_counts().to_dict() == per_wnid
        assert all(Path(s).parent.name == g for s, g in zip(meta["source"], meta["group"]))
        superclass = {w: i for i, sc in enumerate(TASK) for w in sc["source"] + sc["target"]}
        assert meta["label"].tolist() == [superclass[g] for g in meta["group"]]
    assert all("/imagenet/train/" in s for s in data.split("ood_val").metadata["source"])
    assert all("/imagenet/val/" in s for s in data.split("ood_test").metadata["source"])
    for split in ("id_val", "id_test", "ood_val", "ood_test"):
        assert 0.0 <= metric(metrics, split, "acc") <= 1.0
    assert 0.0 <= metric(metrics, "ood_test", "acc", "target") <= 1.0


def test_accuracy_by_hand(stages):
    """ood_test: 3 alpha rows (n02000002) then 6 beta rows; predicting alpha everywhere -> 3/9."""
    data, _ = stages
    labels = data.split("ood_test").labels
    assert labels.tolist() == [0] * 3 + [1] * 6
    logits = torch.tensor([[1.0, 0.0]] * 9)
    rows = {r["domain"]: r["value"] for r in score_logits(data, {"ood_test": logits}).rows if r["metric"] == "acc"}
    assert rows == {"all": pytest.approx(3 / 9), "target": pytest.approx(3 / 9)}
    logits[[0, 3, 4]] = torch.tensor([0.0, 1.0])   # one alpha wrong, two beta right
    assert score_logits(data, {"ood_test": logits}).rows[0]["value"] == pytest.approx(4 / 9)


@pytest.mark.parametrize("task,shape", [("living17", (17, 2)), ("entity30", (30, 4))])
def test_shipped_lists(task, shape):
    """The shipped lists: shape, disjoint ImageNet-1k subclasses, provenance; Living-17's superclasses."""
    raw = json.loads((breeds.SHIPPED / f"{task}.json").read_text())
    assert "make_" + task in raw["provenance"] and "split='rand'" in raw["provenance"]
    superclasses = breeds.class_list(task, task, Path("/nonexistent"))
    n, k = shape
    assert len(superclasses) == n and all(len(s["source"]) == k == len(s["target"]) for s in superclasses)
    wnids = [w for s in superclasses for w in s["source"] + s["target"]]
    imagenet_1k = (Path(find_spec("timm").origin).parent / "data/_info/imagenet_synsets.txt").read_text().split()
    assert len(set(wnids)) == n * 2 * k and set(wnids) <= set(imagenet_1k)
    if task == "living17":
        assert [s["name"].split(",")[0] for s in superclasses] == LIVING17


def test_custom_list_takes_precedence_and_shipped_is_the_fallback(tmp_path):
    """Without <root>/breeds/entity30.json the shipped list is read, so the tiny copy lacks its subclasses."""
    raw = tiny(tmp_path / "raw", task="living17")
    first = breeds.class_list("e30", "entity30", raw)[0]["source"][0]
    with pytest.raises(MissingDataError, match=re.escape(str(raw / "imagenet" / "train" / first))):
        breeds.manifest("e30", entry(raw, "entity30"))
    assert breeds.manifest("l17", entry(raw)).classes == ["alpha", "beta"]


def test_missing_shipped_list_says_how_to_make_it(tmp_path, monkeypatch):
    raw = tiny(tmp_path / "raw")
    (raw / "breeds/living17.json").unlink()
    monkeypatch.setattr(breeds, "SHIPPED", tmp_path / "nowhere")
    out = tmp_path / "data/prepared/l17"
    with pytest.raises(MissingDataError, match=re.escape(str(tmp_path / "nowhere" / "living17.json"))) as info:
        prepare("l17", entry(raw), str(out))
    text = str(info.value)
    assert "make_living17(info_dir, split=\"rand\")" in text and str(raw / "breeds") in text
    assert "expected layout" in text and not out.exists()


@pytest.mark.parametrize("superclasses,problem", [
    ([{"name": "a", "source": [W[0]], "target": [W[0]]}], "a subclass listed twice"),
    ([{"name": "a", "source": [W[0]], "target": []}], "without source or target"),
    ([], "no superclasses"),
    ([{"name": "a", "source": [W[0]]}], "unreadable BREEDS class list"),
])
def test_broken_custom_list(tmp_path, superclasses, problem):
    raw = tiny(tmp_path / "raw")
    path = write_breeds_list(raw, "living17", superclasses)
    with pytest.raises(MissingDataError, match=re.escape(problem) + r".*" + re.escape(str(path))):
        breeds.manifest("l17", entry(raw))


def test_shipped_list_of_wrong_shape_is_refused(tmp_path, monkeypatch):
    """A shipped list must be 17 x (2 + 2); a custom one (as above) may have any shape."""
    monkeypatch.setattr(breeds, "SHIPPED", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped/living17.json").write_text(json.dumps({"name": "living17", "superclasses": TASK}))
    with pytest.raises(MissingDataError, match=r"not 17 superclasses x \(2 source \+ 2 target\)"):
        breeds.manifest("l17", entry(tmp_path / "raw"))


def _break(raw: Path, case: str) -> Path:
    missing = break_imagenet_folders(raw, case, W[4])
    if missing is not None:
        return missing
    bad = sorted((raw / "imagenet/val" / W[5]).iterdir())[1]
    bad.write_bytes(b"GIF89a truncated")
    return bad


@pytest.mark.parametrize("case", ["no_root", "no_val", "val_lacks_class", "corrupt_image"])
def test_missing_or_broken_data(tmp_path, case):
    raw = tiny(tmp_path / "raw")
    missing = _break(raw, case)
    error = broken_data_error(case)
    text = prepare_fails("l17", entry(raw), tmp_path / "data/prepared/l17", missing, error)
    if error is MissingDataError:
        assert "expected layout" in text and "<root>/imagenet/" in text
        assert "BREEDS" in text and "image-net.org" in text
