"""The prepared-data format (format 2) and its integrity record (issue 22, class 6).

Storage: aspect ratio kept, shorter side at ``storage_size`` (never enlarged), JPEG or raw, the same
bytes on every preparation. Integrity, as the issue asks: "Each shard records its size and a checksum
in its index when written; readers check shape, dtype, split list and class count against the index on
open (cheap checks always; the full checksum with ``python -m pipeline verify-data`` or a setting). Any
mismatch is one line naming the file and what to do." In particular "a split dropped from info.json"
must no longer make the linear probe report no OOD rows with exit 0, and "a class count or metadata
that no longer fits the shard" must not give wrong numbers or cryptic crashes.
"""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import integrity
from pipeline.data.errors import PreparedDataError
from pipeline.data.images import Storage, encode, fit, storage_shape
from pipeline.data.shards import PreparedDataset, write_prepared, write_streaming


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Real photographs of several sizes and orientations."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return [china, flower[:, :300], skimage.data.coffee(), skimage.data.chelsea()[:100, :90],
            skimage.data.astronaut()]


def write_photos(out: Path, photos: list[np.ndarray], storage: Storage) -> None:
    """A dataset of the photos (train: all; id_val: the first two), through the streaming writer."""
    metas = {"train": pd.DataFrame({"label": [i % 3 for i in range(len(photos))], "domain": "d", "group": "g",
                                    "source": [f"p{i}" for i in range(len(photos))]}),
             "id_val": pd.DataFrame({"label": [0, 1], "domain": "d", "group": "g", "source": ["p0", "p1"]})}

    def fill(split, writer):
        for i in range(len(metas[split])):
            writer.add(*encode(fit(Image.fromarray(photos[i]), storage.size), storage))

    write_streaming(out, metas, fill, {"name": out.name, "classes": ["a", "b", "c"]}, storage)


def tree_bytes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_storage_keeps_aspect_and_never_enlarges(tmp_path, photos):
    assert storage_shape(427, 640, 256) == (256, 384) and storage_shape(640, 427, 256) == (384, 256)
    assert storage_shape(100, 90, 256) == (100, 90)    # smaller than storage_size: kept as it is
    write_photos(tmp_path / "ds", photos, Storage(256, "jpeg", 90))
    split = PreparedDataset(tmp_path / "ds").split("train")
    want = [storage_shape(*a.shape[:2], 256) for a in photos]
    assert [tuple(s) for s in split.images.sizes] == want
    for i, a in enumerate(photos):
        decoded = split.images.decode(i)
        assert decoded.shape == (*want[i], 3)
        reference = np.asarray(fit(Image.fromarray(a), 256), dtype=np.float64)
        assert np.abs(decoded - reference).mean() < 4   # JPEG q90 (4:2:0) of the fitted image: 2-3.3 here


def test_jpeg_is_a_fraction_of_raw(tmp_path, photos):
    for encoding in ("jpeg", "raw"):
        write_photos(tmp_path / encoding, photos, Storage(256, encoding, 90))
    size = {e: (tmp_path / e / "train.images").stat().st_size for e in ("jpeg", "raw")}
    assert size["jpeg"] < 0.3 * size["raw"]
    raw = PreparedDataset(tmp_path / "raw").split("train").images
    assert np.array_equal(raw.decode(3), np.asarray(fit(Image.fromarray(photos[3]), 256)))   # raw: lossless


def test_preparing_twice_gives_identical_bytes(tmp_path, photos):
    for run in ("a", "b"):
        write_photos(tmp_path / run / "ds", photos, Storage(128, "jpeg", 92))
    a, b = tree_bytes(tmp_path / "a" / "ds"), tree_bytes(tmp_path / "b" / "ds")
    assert a == b and "train.images" in a and "train.index.npy" in a


def test_prepare_stage_twice_is_byte_identical(tiny_workdir):
    """The real stage (digits, raw): a re-run writes the same bytes, so DVC re-runs nothing downstream."""
    from pipeline.stages.prepare_data import main as prepare_main

    out = tiny_workdir / "data/prepared/digits"
    assert prepare_main(["--dataset", "digits"]) == 0
    first = tree_bytes(out)
    shutil.rmtree(out)
    assert prepare_main(["--dataset", "digits"]) == 0
    assert tree_bytes(out) == first


def test_index_records_every_file(tmp_path, photos):
    write_photos(tmp_path / "ds", photos, Storage(64))
    info = json.loads((tmp_path / "ds/info.json").read_text())
    assert info["format"] == 2 and info["num_classes"] == 3 and info["splits"] == {"train": 5, "id_val": 2}
    assert set(info["records"]) == {"train.images", "train.index.npy", "id_val.images", "id_val.index.npy",
                                    "metadata.csv"}
    for rel, rec in info["records"].items():
        assert rec == integrity.file_record(tmp_path / "ds" / rel)
    index = np.load(tmp_path / "ds/train.index.npy")
    assert index.dtype == np.int64 and index.shape == (5, 4) and index[0, 0] == 0
    assert (index[1:, 0] == index[:-1, 0] + index[:-1, 1]).all()


# --- integrity: each way prepared data can be altered is one line naming the file ---------------------------

@pytest.fixture
def prepared(tmp_path, photos) -> Path:
    root = tmp_path / "ds"
    write_photos(root, photos, Storage(64, "raw"))
    return root


def edit_info(root: Path, change, reseal: bool) -> None:
    info = json.loads((root / "info.json").read_text())
    change(info)
    if reseal:   # a consistent rewrite, as a tool (or a careful hand) would make it
        info = integrity.seal(info)
    (root / "info.json").write_text(json.dumps(info))


def one_line_error(root: Path, verify: bool | None = None) -> str:
    with pytest.raises(PreparedDataError) as err:
        data = PreparedDataset(root, verify=verify)
        for name in data.split_names:
            data.split(name)
    msg = str(err.value)
    assert "\n" not in msg and "re-prepare" in msg and str(root) in msg
    return msg


def test_intact_dataset_opens(prepared):
    data = PreparedDataset(prepared, verify=True)
    assert [len(data.split(s)) for s in data.split_names] == [5, 2]


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
def test_split_dropped_from_info(prepared, reseal):
    def drop(info):
        del info["splits"]["id_val"]
        for rel in ("id_val.images", "id_val.index.npy"):
            del info["records"][rel]

    edit_info(prepared, drop, reseal)
    msg = one_line_error(prepared)
    if reseal:   # the shard the index no longer lists gives it away
        assert msg.startswith(f"{prepared / 'id_val.images'}: a shard of split 'id_val', which info.json does not list")
    else:
        assert msg.startswith(f"{prepared / 'info.json'}: edited after preparation")


def test_class_count_that_no_longer_fits(prepared):
    def drop_class(info):
        info["classes"] = info["classes"][:2]
        info["num_classes"] = 2

    edit_info(prepared, drop_class, reseal=True)
    msg = one_line_error(prepared)
    assert msg.startswith(f"{prepared / 'metadata.csv'}: label 2 in row") and "does not fit the 2 classes" in msg
    edit_info(prepared, lambda info: info.update(num_classes=3), reseal=True)
    assert "num_classes 3 but 2 class names" in one_line_error(prepared)


def test_metadata_that_no_longer_fits_the_shard(prepared):
    meta = pd.read_csv(prepared / "metadata.csv")
    meta.iloc[:-1].to_csv(prepared / "metadata.csv", index=False)   # one row lost
    assert one_line_error(prepared).startswith(f"{prepared / 'metadata.csv'}: ")
    rec = integrity.file_record(prepared / "metadata.csv")
    edit_info(prepared, lambda info: info["records"].update({"metadata.csv": rec}), reseal=True)
    msg = one_line_error(prepared)
    assert "split 'id_val' has 1 rows" in msg and "info.json records 2 images" in msg


def test_truncated_or_missing_shard(prepared):
    path = prepared / "train.images"
    path.write_bytes(path.read_bytes()[:-10])
    assert one_line_error(prepared).startswith(f"{path}: ") and "truncated or modified" in one_line_error(prepared)
    path.unlink()
    assert one_line_error(prepared) == (
        f"{path}: missing (listed in info.json); re-prepare the dataset: delete {prepared} and run prepare_data "
        f"again (python -m pipeline prepare_data --dataset ds, or the whole pipeline)")


def test_index_shape_dtype_and_offsets(prepared):
    path = prepared / "train.index.npy"
    index = np.load(path)

    def rewrite(array):
        np.save(path, array)
        rec = integrity.file_record(path)
        edit_info(prepared, lambda info: info["records"].update({"train.index.npy": rec}), reseal=True)

    rewrite(index.astype(np.int32))
    assert "int32 (5, 4), expected int64 (5, 4)" in one_line_error(prepared)
    rewrite(index[:4])
    assert "expected int64 (5, 4) for the 5 images" in one_line_error(prepared)
    bad = index.copy()
    bad[2, 0] += 3
    rewrite(bad)
    assert one_line_error(prepared).startswith(f"{path}: its offsets do not tile train.images")


def test_flipped_byte_needs_the_checksum(prepared, monkeypatch, capsys):
    """Same size, other content: the cheap checks pass; verify=True, PIPELINE_VERIFY_DATA=1 and verify-data catch it."""
    from pipeline.cli import main as cli

    path = prepared / "train.images"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    PreparedDataset(prepared).split("train")
    assert one_line_error(prepared, verify=True).startswith(f"{path}: its SHA-256 differs")
    monkeypatch.setenv("PIPELINE_VERIFY_DATA", "1")
    assert one_line_error(prepared).startswith(f"{path}: its SHA-256 differs")
    monkeypatch.delenv("PIPELINE_VERIFY_DATA")
    assert cli(["verify-data", str(prepared)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: its SHA-256 differs")


def test_verify_data_reports_ok(prepared, capsys):
    from pipeline.cli import main as cli

    assert cli(["verify-data", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{prepared}: OK: 2 splits, 7 images, 3 classes") and "checksums match" in out


def test_data_of_the_previous_format_is_never_read(tmp_path, photos):
    """Format 1 (uint8 squares in {split}.npy, no index): one line saying to re-prepare, not garbage."""
    old = tmp_path / "old"
    old.mkdir()
    np.save(old / "train.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (old / "info.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 8, "splits": {"train": 2}}))
    pd.DataFrame({"split": ["train"] * 2, "index": [0, 1], "label": [0, 1], "domain": "d", "group": "g",
                  "source": ["x", "y"]}).to_csv(old / "metadata.csv", index=False)
    assert one_line_error(old).startswith(f"{old / 'info.json'}: prepared in format 1 (uint8 squares)")


def test_a_stage_on_altered_data_fails_in_one_line(tiny_workdir, capsys):
    """The issue's case: a split dropped from info.json made the linear probe report no OOD rows, with exit 0.
    Now the stage stops (exit 1) with one line naming the file."""
    from pipeline.cli import main as cli
    from pipeline.stages.backbone import main as backbone_main
    from pipeline.stages.features import main as features_main
    from pipeline.stages.prepare_data import main as prepare_main

    root = tiny_workdir / "data/prepared/digits"
    assert prepare_main(["--dataset", "digits"]) == 0
    assert backbone_main(["--model", "tiny"]) == 0
    assert features_main(["--dataset", "digits", "--model", "tiny"]) == 0

    def drop(info):
        del info["splits"]["ood_test"]
        for rel in ("ood_test.images", "ood_test.index.npy"):
            del info["records"][rel]

    edit_info(root, drop, reseal=True)
    capsys.readouterr()
    assert cli(["linear_probe", "--dataset", "digits", "--model", "tiny"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "ood_test.images: a shard of split 'ood_test'" in err[0]
    assert not (tiny_workdir / "results/digits/tiny/lp").exists()   # stopped before writing anything


def test_write_prepared_checks_its_input(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    meta = pd.DataFrame({"label": [0, 1, 0], "domain": "d", "group": "g", "source": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="expected uint8"):
        write_prepared(tmp_path / "x", {"train": (images.astype(np.float32), meta)}, {"classes": ["a", "b"]},
                       Storage(8))
    with pytest.raises(ValueError, match="3 images but 2"):
        write_prepared(tmp_path / "x", {"train": (images, meta.iloc[:2])}, {"classes": ["a", "b"]}, Storage(8))
    assert not (tmp_path / "x").exists()


def test_many_images_stream_in_order(tmp_path):
    """More chunks than the decode window holds: every image written once, in manifest order."""
    from pipeline.data.decode import CHUNK, store_into
    from pipeline.data.shards import SplitWriter

    n = 3 * CHUNK + 5   # one thread keeps 2 chunks in flight
    sources = [str(i) for i in range(n)]

    def open_image(source: str) -> Image.Image:
        return Image.new("RGB", (3, 2), (int(source) % 256, int(source) // 256, 0))

    writer = SplitWriter(tmp_path, "train", n)
    store_into(writer, sources, open_image, Storage(8, "raw"), threads=1)
    writer.close()
    index = np.load(tmp_path / "train.index.npy")
    data = np.fromfile(tmp_path / "train.images", dtype=np.uint8)
    firsts = data[index[:, 0]].astype(int) + 256 * data[index[:, 0] + 1].astype(int)
    assert firsts.tolist() == list(range(n))
