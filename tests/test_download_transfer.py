"""Download parts of the seven transfer targets: shipped extract specs -> the layouts the sources read.

Each shipped part keeps its extract/layout spec; only its URLs and checksums are replaced, to serve
tiny fabricated archives (tests/fabricate_transfer.py, packed as the real archives are: tar or
tar.gz, the folder each unpacks to) from 127.0.0.1. The source module must then accept what was
unpacked. Stanford Cars (original host gone) is placed by hand only.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
from download_helpers import FAST, md5, sha256, tar_bytes
from fabricate_transfer import (
    fabricate_caltech256,
    fabricate_cub200,
    fabricate_fgvc_aircraft,
    fabricate_flowers102,
    fabricate_mit_indoor67,
    fabricate_stanford_cars,
    fabricate_stanford_dogs,
)

from pipeline.data.sources import SOURCES
from pipeline.download.datasets import SINGLE_PART_SOURCES, ensure_dataset, ensure_source, part_status, parts_for
from pipeline.download.errors import ManualDataError
from pipeline.download.manifest import load_manifest

SHIPPED = load_manifest()
FABRICATE = {"stanford_dogs": fabricate_stanford_dogs, "caltech256": fabricate_caltech256,
             "mit_indoor67": fabricate_mit_indoor67, "cub200": fabricate_cub200,
             "stanford_cars": fabricate_stanford_cars, "fgvc_aircraft": fabricate_fgvc_aircraft,
             "flowers102": fabricate_flowers102}


def pack(folder: Path, compression: str, top: str | None = None) -> bytes:
    """A tar of ``folder``'s files under the top-level name ``top`` (default the folder's name; "" = none)."""
    top = folder.name if top is None else top
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return tar_bytes([((f"{top}/" if top else "") + p.relative_to(folder).as_posix(), p.read_bytes())
                      for p in files], compression)


def served(server, src: Path, source: str) -> tuple[object, dict[str, bytes]]:
    """The shipped part of ``source`` pointed at the fabricated copy's archives; also returns the bytes served."""
    raw = FABRICATE[source](src)
    blobs = {
        "stanford_dogs": lambda: {"images.tar": pack(raw / "stanford_dogs/Images", ""),
                                  "lists.tar": pack(raw / "stanford_dogs/lists", "", top="")},
        "caltech256": lambda: {"256_ObjectCategories.tar": pack(raw / "caltech256/256_ObjectCategories", "")},
        "mit_indoor67": lambda: {"indoorCVPR_09.tar": pack(raw / "mit_indoor67/Images", ""),
                                 "TrainImages.txt": (raw / "mit_indoor67/TrainImages.txt").read_bytes(),
                                 "TestImages.txt": (raw / "mit_indoor67/TestImages.txt").read_bytes()},
        "cub200": lambda: {"CUB_200_2011.tgz": pack(raw / "CUB_200_2011", "gz")},
        "fgvc_aircraft": lambda: {"fgvc-aircraft-2013b.tar.gz": pack(raw / "fgvc-aircraft-2013b", "gz")},
        "flowers102": lambda: {"102flowers.tgz": pack(raw / "flowers-102/jpg", "gz"),
                               "imagelabels.mat": (raw / "flowers-102/imagelabels.mat").read_bytes(),
                               "setid.mat": (raw / "flowers-102/setid.mat").read_bytes()},
    }[source]()
    manifest = SHIPPED
    for name, data in blobs.items():
        spec = next(f for f in SHIPPED.part(source).files if f.name == name)
        url = server.add(f"/{source}/{name}", data)
        manifest = manifest.with_file(source, name, urls=[url], size=len(data),
                                      md5=md5(data) if spec.md5 else None,
                                      sha256=sha256(data) if spec.sha256 or not spec.md5 else None)
    return manifest, blobs


@pytest.mark.parametrize("source", [s for s in SINGLE_PART_SOURCES if s != "stanford_cars"])
def test_download_unpacks_into_the_layout_the_source_reads(server, tmp_path: Path, source: str) -> None:
    manifest, blobs = served(server, tmp_path / "src", source)
    root = tmp_path / "raw"
    cfg = {"source": source, "root": str(root), "id_val_fraction": 0.25,
           **({"train_per_class": 4} if source == "caltech256" else {})}
    assert ensure_dataset("d", cfg, manifest=manifest, lock=tmp_path / "checksums.lock", options=FAST) == {
        source: "downloaded"}
    records = importlib.import_module(SOURCES[source].module).manifest("d", cfg).records
    assert records["split"].value_counts().to_dict() == {"train": 9, "id_test": 9 if source == "caltech256" else 6,
                                                         "id_val": 3}
    server.reset()
    assert ensure_dataset("d", cfg, manifest=manifest, lock=tmp_path / "checksums.lock", options=FAST) == {
        source: "marker"}
    assert server.requests == []


def test_stanford_cars_is_placed_by_hand(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    with pytest.raises(ManualDataError) as err:
        ensure_source("stanford_cars", root, download=True)
    message = str(err.value)
    assert "\n" not in message and "placed by hand, never downloaded" in message
    assert "github.com/pytorch/vision/issues/7545" in message and f"{root}/stanford_cars/{{cars_train/" in message
    fabricate_stanford_cars(root)
    assert ensure_source("stanford_cars", root) == {"stanford_cars": "layout"}
    other = tmp_path / "other"
    fabricate_stanford_cars(other, test_labels_in_devkit=True)
    assert ensure_source("stanford_cars", other) == {"stanford_cars": "layout"}


@pytest.mark.parametrize("source", SINGLE_PART_SOURCES)
def test_layout_check_matches_what_the_source_reads(tmp_path: Path, source: str) -> None:
    """A fabricated copy in the real layout counts as placed by hand; without the checked paths it does not."""
    import shutil

    root = FABRICATE[source](tmp_path / "raw")
    part = SHIPPED.part(source)
    assert parts_for(source) == [source] and part_status(part, root) == "layout"
    for alternative in part.check:
        path = root / alternative[0]
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    assert part_status(part, root) is None


def test_checksums_match_the_packages_that_publish_them() -> None:
    """Flowers-102 and Caltech-256 MD5s are torchvision's, and its URLs for Flowers, Aircraft and Caltech."""
    from torchvision.datasets import Caltech256, FGVCAircraft, Flowers102

    flowers = {f.name: f for f in SHIPPED.part("flowers102").files}
    for name, digest in Flowers102._file_dict.values():
        assert flowers[name].md5 == digest and flowers[name].mirrors[0].url == Flowers102._download_url_prefix + name
    (caltech,) = SHIPPED.part("caltech256").files
    source = inspect.getsource(Caltech256.download)
    assert caltech.md5 == re.search(r'md5="([0-9a-f]{32})"', source).group(1)
    assert caltech.mirrors[0].url in source
    (aircraft,) = SHIPPED.part("fgvc_aircraft").files
    assert aircraft.mirrors[0].url == FGVCAircraft._URL and aircraft.sha256 and aircraft.size
    assert not SHIPPED.part("mit_indoor67").files[0].md5 and not SHIPPED.part("mit_indoor67").files[0].sha256
    assert SHIPPED.part("stanford_cars").manual
    for source in SINGLE_PART_SOURCES:
        for file in SHIPPED.part(source).files:
            assert file.checksum_source or not (file.md5 or file.sha256)
