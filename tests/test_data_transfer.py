"""The seven transfer targets of Li et al. (2020): real layouts -> prepared ID-only splits, and broken data.

Each source reads a tiny fabricated copy in its real on-disk format (tests/fabricate_transfer.py:
3 classes, 4 training and 2 test images per class; Caltech-256 draws 4 of its 7 per class). With
``id_val_fraction: 0.25`` every source prepares train 9 / id_val 3 / id_test 6 (Caltech: 9) and no
OOD split. Every broken case must stop before anything is written, naming the file.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from dataset_stages import broken_data_error, prepare_fails, run_dataset_stages
from fabricate_transfer import (
    AIRCRAFT,
    CALTECH,
    CARS,
    CUB,
    DOGS,
    INDOOR,
    fabricate_caltech256,
    fabricate_cub200,
    fabricate_fgvc_aircraft,
    fabricate_flowers102,
    fabricate_mit_indoor67,
    fabricate_stanford_cars,
    fabricate_stanford_dogs,
    red,
)

from pipeline.data.prepare import prepare
from pipeline.data.shards import PreparedDataset
from pipeline.data.sources import SOURCES
from pipeline.data.sources.base import MissingDataError


@dataclass(frozen=True)
class Spec:
    fabricate: object
    classes: list[str]
    split_file: str | None        # a split/label file to delete (None: the source has none)
    class_folder: str             # a class folder (or the flat image folder) to delete
    culprit: str | None = None    # what the error names when the folder is gone (default: the folder)
    extra: tuple = ()             # dataset keys besides the common ones


SPECS = {
    "stanford_dogs": Spec(fabricate_stanford_dogs, DOGS, "stanford_dogs/lists/test_list.mat",
                          "stanford_dogs/Images/n02085782-Japanese_spaniel"),
    "caltech256": Spec(fabricate_caltech256, CALTECH, None, "caltech256/256_ObjectCategories/002.american-flag",
                       "caltech256/256_ObjectCategories/002.<name>", (("train_per_class", 4),)),
    "mit_indoor67": Spec(fabricate_mit_indoor67, INDOOR, "mit_indoor67/TestImages.txt", "mit_indoor67/Images/bar"),
    "cub200": Spec(fabricate_cub200, CUB, "CUB_200_2011/train_test_split.txt",
                   "CUB_200_2011/images/002.Laysan_Albatross"),
    "stanford_cars": Spec(fabricate_stanford_cars, CARS, "stanford_cars/cars_test_annos_withlabels.mat",
                          "stanford_cars/cars_train"),
    "fgvc_aircraft": Spec(fabricate_fgvc_aircraft, AIRCRAFT, "fgvc-aircraft-2013b/data/images_variant_test.txt",
                          "fgvc-aircraft-2013b/data/images"),
    "flowers102": Spec(fabricate_flowers102, ["1", "2", "3"], "flowers-102/setid.mat", "flowers-102/jpg"),
}
COUNTS = {"train": 9, "id_val": 3, "id_test": 6}
WITH_SPLIT_FILES = [s for s, spec in SPECS.items() if spec.split_file]


def entry(source: str, raw: Path, **extra) -> dict:
    return {"source": source, "root": str(raw), "storage_size": 16, "id_val_fraction": 0.25,
            **dict(SPECS[source].extra), **extra}


def fabricated(tmp_path: Path, source: str) -> Path:
    return SPECS[source].fabricate(tmp_path / "raw")


def out_dir(tmp_path: Path, source: str) -> Path:
    return tmp_path / "data/prepared" / source


def manifest_of(source: str, cfg: dict):
    import importlib

    return importlib.import_module(SOURCES[source].module).manifest(source, cfg)


def test_every_new_source_is_registered() -> None:
    assert set(SPECS) <= set(SOURCES)
    for source in SPECS:
        assert {"root", "storage_size", "download", "id_val_fraction", "seed"} <= set(SOURCES[source].keys)


@pytest.mark.parametrize("source", list(SPECS))
def test_prepared_splits_labels_and_pixels(tmp_path: Path, source: str) -> None:
    """ID splits only, the class list in label order, every image where its label says, id_val out of train."""
    raw = fabricated(tmp_path, source)
    counts = prepare(source, entry(source, raw), str(out_dir(tmp_path, source)))
    expected = {**COUNTS, "id_test": 9} if source == "caltech256" else COUNTS
    assert counts == expected
    data = PreparedDataset(out_dir(tmp_path, source))
    assert data.split_names == ["train", "id_val", "id_test"] and data.info["ood"] is False
    assert data.info["classes"] == SPECS[source].classes
    for name in data.split_names:
        split = data.split(name)
        assert set(split.metadata["domain"]) == set(split.metadata["group"]) == {source}
        per_class = split.metadata["label"].value_counts().to_dict()
        assert per_class == dict.fromkeys(range(3), expected[name] // 3), name
        reds = split.images.stack()[..., 0].reshape(len(split), -1).astype(int)
        assert np.abs(reds - np.array([red(y) for y in split.labels])[:, None]).max() <= 3, name
    train, val = (set(data.split(s).metadata["source"]) for s in ("train", "id_val"))
    assert not train & val


@pytest.mark.parametrize("source", list(SPECS))
def test_holdout_is_seeded_and_keeps_the_test_set(tmp_path: Path, source: str) -> None:
    raw = fabricated(tmp_path, source)

    def sources(seed: int, split: str) -> list[str]:
        records = manifest_of(source, entry(source, raw, seed=seed)).records
        return sorted(records.loc[records["split"] == split, "source"])

    assert sources(0, "id_val") == sources(0, "id_val")
    assert any(sources(0, "id_val") != sources(s, "id_val") for s in range(1, 6))
    assert all(sources(0, "id_test") == sources(s, "id_test") for s in range(1, 3))


@pytest.mark.parametrize("source", WITH_SPLIT_FILES)
def test_missing_split_file(tmp_path: Path, source: str) -> None:
    raw = fabricated(tmp_path, source)
    (raw / SPECS[source].split_file).unlink()
    message = prepare_fails(source, entry(source, raw), out_dir(tmp_path, source), raw / SPECS[source].split_file,
                            MissingDataError)
    assert "not found" in message.splitlines()[0] and "expected layout" in message


@pytest.mark.parametrize("source", list(SPECS))
def test_missing_class_folder(tmp_path: Path, source: str) -> None:
    raw = fabricated(tmp_path, source)
    spec = SPECS[source]
    shutil.rmtree(raw / spec.class_folder)
    message = prepare_fails(source, entry(source, raw), out_dir(tmp_path, source),
                            raw / (spec.culprit or spec.class_folder), MissingDataError)
    assert "folder" in message.splitlines()[0]


@pytest.mark.parametrize("source", list(SPECS))
@pytest.mark.parametrize("case", ["missing_image", "corrupt_image"])
def test_missing_or_corrupt_image(tmp_path: Path, source: str, case: str) -> None:
    """A test image deleted, or overwritten with bytes no decoder reads: named, nothing written."""
    raw = fabricated(tmp_path, source)
    records = manifest_of(source, entry(source, raw)).records
    victim = Path(records.loc[records["split"] == "id_test", "source"].iloc[0])
    if case == "missing_image":
        victim.unlink()
    else:
        victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if source == "caltech256" and case == "missing_image":   # no list: the draw simply has one image less
        assert str(victim) not in set(manifest_of(source, entry(source, raw)).records["source"])
        return
    message = prepare_fails(source, entry(source, raw), out_dir(tmp_path, source), victim, broken_data_error(case))
    assert len(message.splitlines()[0]) > 0 and str(victim) in message.splitlines()[0]


def test_end_to_end_without_ood_splits(tmp_path: Path, monkeypatch) -> None:
    """prepare, fine-tune, evaluate on an ID-only dataset: metric rows for id_val and id_test only."""
    raw = fabricated(tmp_path, "flowers102")
    data, metrics = run_dataset_stages(tmp_path, "fl", entry("flowers102", raw), monkeypatch)
    assert data.split_names == ["train", "id_val", "id_test"]
    rows = metrics[metrics["metric"] == "acc"]
    assert set(zip(rows["split"], rows["domain"])) == {("id_val", "all"), ("id_val", "flowers102"),
                                                       ("id_test", "all"), ("id_test", "flowers102")}


def test_params_accept_the_new_sources_and_their_keys() -> None:
    from conftest import REPO

    from pipeline.config.load import ParamsError, validate

    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    for source in SPECS:
        cfg["datasets"]["d"] = {"source": source, "root": "x", "storage_size": 64, "download": False,
                                "id_val_fraction": 0.1, "seed": 3}
        validate(cfg)
    cfg["datasets"]["d"] = {"source": "caltech256", "train_per_class": 30, "test_per_class": 20, "clutter": True,
                            "split_seed": 1}
    validate(cfg)
    cfg["datasets"]["d"]["test_per_class"] = None
    validate(cfg)
    cfg["datasets"]["d"] = {"source": "flowers102", "train_per_class": 30}
    with pytest.raises(ParamsError, match=r"datasets\.d\.train_per_class: not used by source flowers102"):
        validate(cfg)


# --- source-specific checks ---------------------------------------------------------------------------------

def test_caltech_draw_per_class_and_options(tmp_path: Path) -> None:
    """60/rest by default; test_per_class caps the test draw; clutter adds the 257th class; draws are per class."""
    raw = fabricate_caltech256(tmp_path / "raw")
    base = raw / "caltech256/256_ObjectCategories"

    def split_of(**kw) -> dict[str, set[str]]:
        r = manifest_of("caltech256", entry("caltech256", raw, **kw)).records
        return {s: set(r.loc[r["split"] == s, "source"]) for s in ("train", "id_val", "id_test")}

    default = split_of()
    assert sum(map(len, default.values())) == 21   # every .jpg of the 3 classes; greg/ and RENAME2 ignored
    assert not any("greg" in s or "RENAME2" in s for part in default.values() for s in part)
    capped = split_of(test_per_class=1)
    assert len(capped["id_test"]) == 3 and capped["id_test"] <= default["id_test"]
    m = manifest_of("caltech256", entry("caltech256", raw, clutter=True, test_per_class=1))
    assert m.classes == [*CALTECH, "257.clutter"] and (m.records["label"] == 3).sum() == 5
    assert split_of(split_seed=1)["id_test"] != default["id_test"]
    # Another folder's content does not move class 001's draw.
    (base / "003.backpack" / "003_0007.jpg").unlink()
    after = split_of()
    assert {s for s in after["id_test"] if "/001.ak47/" in s} == {s for s in default["id_test"] if "/001.ak47/" in s}


def test_caltech_too_few_images(tmp_path: Path) -> None:
    raw = fabricate_caltech256(tmp_path / "raw")
    with pytest.raises(MissingDataError, match=r"holds 7 \.jpg images, fewer than the 61 .*: .*001\.ak47"):
        manifest_of("caltech256", entry("caltech256", raw, train_per_class=60))
    with pytest.raises(MissingDataError, match=r"fewer than the 8 that train_per_class 4 \+ test_per_class 4"):
        manifest_of("caltech256", entry("caltech256", raw, test_per_class=4))


def test_dogs_label_disagreeing_with_folder(tmp_path: Path) -> None:
    from scipy.io import loadmat, savemat

    raw = fabricate_stanford_dogs(tmp_path / "raw")
    path = raw / "stanford_dogs/lists/test_list.mat"
    mat = loadmat(path)
    mat["labels"][0, 0] = 1 if mat["labels"][0, 0] != 1 else 2
    savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(MissingDataError, match=r"entry 1 gives class folder .* label \d, but train_list\.mat"):
        manifest_of("stanford_dogs", entry("stanford_dogs", raw))


def test_dogs_unreadable_mat(tmp_path: Path) -> None:
    raw = fabricate_stanford_dogs(tmp_path / "raw")
    path = raw / "stanford_dogs/lists/train_list.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file truncated")
    prepare_fails("stanford_dogs", entry("stanford_dogs", raw), out_dir(tmp_path, "stanford_dogs"), path,
                  MissingDataError)


def test_cub_image_outside_its_class_folder(tmp_path: Path) -> None:
    raw = fabricate_cub200(tmp_path / "raw")
    path = raw / "CUB_200_2011/image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[0] = "1 2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MissingDataError, match=r"lies outside the folder of its class '002\.Laysan_Albatross'.*"
                                               r"images\.txt:1"):
        manifest_of("cub200", entry("cub200", raw))


def test_cub_image_id_missing_from_split_file(tmp_path: Path) -> None:
    raw = fabricate_cub200(tmp_path / "raw")
    path = raw / "CUB_200_2011/train_test_split.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(MissingDataError, match=r"image id 1 .* is not listed: .*train_test_split\.txt"):
        manifest_of("cub200", entry("cub200", raw))


def test_cars_test_labels_in_devkit_and_unlabelled_file(tmp_path: Path) -> None:
    from scipy.io import savemat

    raw = fabricate_stanford_cars(tmp_path / "raw", test_labels_in_devkit=True)
    assert len(manifest_of("stanford_cars", entry("stanford_cars", raw)).records) == 18
    # cars_test_annos.mat (no classes) saved under the labelled file's name
    annos = np.zeros((1, 1), dtype=[("fname", "O")])
    annos[0, 0] = (np.array(["00001.jpg"]),)
    savemat(raw / "stanford_cars/devkit/cars_test_annos_withlabels.mat", {"annotations": annos})
    with pytest.raises(MissingDataError, match=r"annotations lack field\(s\) \['class'\]"):
        manifest_of("stanford_cars", entry("stanford_cars", raw))


def test_aircraft_unknown_variant(tmp_path: Path) -> None:
    raw = fabricate_fgvc_aircraft(tmp_path / "raw")
    path = raw / "fgvc-aircraft-2013b/data/images_variant_test.txt"
    path.write_text(path.read_text() + "1234567 Concorde\n")
    with pytest.raises(MissingDataError, match=r"variant 'Concorde' is not in variants\.txt: .*_test\.txt:7"):
        manifest_of("fgvc_aircraft", entry("fgvc_aircraft", raw))


def test_flowers_image_in_two_sets(tmp_path: Path) -> None:
    from scipy.io import loadmat, savemat

    raw = fabricate_flowers102(tmp_path / "raw")
    path = raw / "flowers-102/setid.mat"
    sets = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    sets["tstid"] = np.concatenate([sets["tstid"], sets["trnid"][:, :1]], axis=1)
    savemat(path, sets)
    with pytest.raises(MissingDataError, match=r"image \d+ is in both trnid and tstid: .*setid\.mat"):
        manifest_of("flowers102", entry("flowers102", raw))


def test_indoor_malformed_line_and_unknown_test_class(tmp_path: Path) -> None:
    raw = fabricate_mit_indoor67(tmp_path / "raw")
    path = raw / "mit_indoor67/TestImages.txt"
    original = path.read_bytes()
    path.write_bytes(original + b"no_slash_here.jpg\r\n")
    with pytest.raises(MissingDataError, match=r"malformed line 'no_slash_here\.jpg'.*TestImages\.txt:7"):
        manifest_of("mit_indoor67", entry("mit_indoor67", raw))
    path.write_bytes(original + b"bowling/b1.jpg\r\n")
    with pytest.raises(MissingDataError, match=r"class 'bowling' has no image in TrainImages\.txt"):
        manifest_of("mit_indoor67", entry("mit_indoor67", raw))
