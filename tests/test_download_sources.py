"""The shipped manifest against the real source layouts, the packages it quotes, and a loopback server.

Real parts (CIFAR-10 + STL-10 + CIFAR-10.1, DomainNet) keep their shipped extract and layout
specs; only their URLs and checksums are replaced, to serve tiny fabricated archives in the real
formats from 127.0.0.1. The source modules of ``pipeline/data/sources`` must then accept what
was unpacked, and ``prepare`` must run on it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from download_helpers import FAST, md5, pack_folder, sha256
from fabricate_images import fabricate_cifar_task, fabricate_domainnet
from http_server import LoopbackServer

from pipeline.data.sources import SOURCES
from pipeline.download.datasets import WILDS_SOURCES, ensure_dataset, ensure_source, marker_path, parts_for
from pipeline.download.errors import ManualDataError
from pipeline.download.manifest import load_manifest

SHIPPED = load_manifest()


def serve_cifar_task(server: LoopbackServer, src: Path):
    """The shipped cifar10/stl10/cifar10_1 parts, pointed at fabricated copies served locally."""
    fabricate_cifar_task(src, version="py")
    manifest = SHIPPED
    for part, name, folder in (("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
                               ("stl10", "stl10_binary.tar.gz", "stl10_binary")):
        data = pack_folder(src / folder, "tar.gz")
        url = server.add(f"/{part}/{name}", data)
        manifest = manifest.with_file(part, name, urls=[url], size=len(data), md5=md5(data), sha256=None)
    for name in ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy"):
        data = (src / "cifar10.1" / name).read_bytes()
        url = server.add(f"/c101/{name}", data)
        manifest = manifest.with_file("cifar10_1", name, urls=[url], size=len(data), sha256=sha256(data))
    return manifest


def test_cifar_task_downloads_into_the_layout_prepare_reads(server, tmp_path: Path) -> None:
    from pipeline.data.prepare import prepare
    from pipeline.data.sources import cifar

    manifest = serve_cifar_task(server, tmp_path / "src")
    root = tmp_path / "raw"
    cfg = {"source": "cifar10", "root": str(root), "storage_size": 32, "id_val_fraction": 0.2}
    status = ensure_dataset("c10", cfg, manifest=manifest, lock=tmp_path / "checksums.lock", options=FAST)
    assert status == {"cifar10": "downloaded", "stl10": "downloaded", "cifar10_1": "downloaded"}
    assert all(marker_path(root, p).is_file() for p in status)
    records = cifar.manifest("c10", cfg).records   # the source accepts what was unpacked
    assert records["domain"].value_counts().to_dict() == {"cifar10": 70, "stl10": 27, "cifar10_1": 20}
    counts = prepare("c10", cfg, str(tmp_path / "prepared/c10"))
    assert counts == {"train": 40, "id_val": 10, "id_test": 20, "ood_val": 19, "ood_test": 28}

    server.reset()
    again = ensure_dataset("c10", cfg, manifest=manifest, lock=tmp_path / "checksums.lock", options=FAST)
    assert set(again.values()) == {"marker"} and server.requests == []


def test_only_the_chosen_ood_sets_are_fetched(server, tmp_path: Path) -> None:
    manifest = serve_cifar_task(server, tmp_path / "src")
    status = ensure_source("cifar10", tmp_path / "raw", cfg={"ood": ["cifar10_1"]}, manifest=manifest,
                           lock=tmp_path / "lock", options=FAST)
    assert status == {"cifar10": "downloaded", "cifar10_1": "downloaded"}
    assert server.hits("/stl10/stl10_binary.tar.gz") == 0 and not (tmp_path / "raw/stl10_binary").exists()


def test_domainnet_zips_and_split_files(server, tmp_path: Path) -> None:
    from pipeline.data.sources import domainnet

    src = fabricate_domainnet(tmp_path / "src", domains=("sketch", "real"))
    manifest = SHIPPED
    for domain in ("sketch", "real"):
        part = f"domainnet_{domain}"
        data = pack_folder(src / domain, "zip")
        manifest = manifest.with_file(part, f"{domain}.zip", urls=[server.add(f"/{domain}.zip", data)],
                                      size=len(data), sha256=sha256(data))
        for split in ("train", "test"):
            text = (src / f"{domain}_{split}.txt").read_bytes()
            manifest = manifest.with_file(part, f"{domain}_{split}.txt", size=len(text), sha256=sha256(text),
                                          urls=[server.add(f"/txt/{domain}_{split}.txt", text)])
    root = tmp_path / "raw"
    cfg = {"source": "domainnet", "root": str(root), "id_domain": "sketch", "ood_domains": ["real"],
           "id_val_fraction": 0.25, "ood_val_fraction": 0.5}
    assert ensure_dataset("dn", cfg, manifest=manifest, lock=tmp_path / "lock", options=FAST) == {
        "domainnet_sketch": "downloaded", "domainnet_real": "downloaded"}
    records = domainnet.manifest("dn", cfg).records
    assert set(records["domain"]) == {"sketch", "real"} and len(records) > 0


def test_imagenet_stays_manual(tmp_path: Path) -> None:
    """ImageNet (so BREEDS) is never fetched: one line with where to get it and the exact layout."""
    root = tmp_path / "raw"
    for source in ("imagenet", "living17", "entity30"):
        with pytest.raises(ManualDataError) as err:
            ensure_source(source, root, download=True, cfg={"ood": ["imagenet_r"]} if source == "imagenet" else None)
        message = str(err.value)
        assert "\n" not in message and "https://image-net.org/download.php" in message
        assert f"{root}/imagenet/{{train,val}}/<wnid>/" in message and "accept its terms" in message
    for part in ("train/n01440764", "val/n01440764"):
        (root / "imagenet" / part).mkdir(parents=True)
        (root / "imagenet" / part / "x.JPEG").write_bytes(b"")
    assert ensure_source("living17", root) == {"imagenet": "layout"}


def test_wilds_entry_with_download_false_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(ManualDataError, match=r"waterbirds_v1.0/\{RELEASE_v1.0.txt,metadata.csv"):
        ensure_dataset("wb", {"source": "waterbirds", "root": str(tmp_path), "download": False})


# --- the manifest itself ------------------------------------------------------------------------------------

def test_manifest_matches_torchvision_published_md5() -> None:
    from torchvision.datasets import CIFAR10, STL10

    for part, cls in (("cifar10", CIFAR10), ("stl10", STL10)):
        (file,) = SHIPPED.part(part).files
        assert file.name == cls.filename and cls.url in [m.url for m in file.mirrors]
        assert file.md5 == cls.tgz_md5 and "torchvision" in file.checksum_source


def test_manifest_matches_the_wilds_package_metadata() -> None:
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset
    from wilds.datasets.fmow_dataset import FMoWDataset
    from wilds.datasets.iwildcam_dataset import IWildCamDataset
    from wilds.datasets.waterbirds_dataset import WaterbirdsDataset

    from pipeline.data.sources.wilds import SPECS

    classes = {"waterbirds": WaterbirdsDataset, "camelyon17": Camelyon17Dataset, "fmow": FMoWDataset,
               "iwildcam": IWildCamDataset}
    for source, cls in classes.items():
        meta = cls._versions_dict[SPECS[source].version]
        (file,) = SHIPPED.part(source).files
        assert [m.url for m in file.mirrors] == [meta["download_url"]]
        assert file.approx_size == meta["compressed_size"] and file.size is None   # wilds: "approximate"
        assert file.to == f"{source}_v{SPECS[source].version}" and file.member == "."


def test_layout_checks_follow_the_source_modules() -> None:
    from pipeline.data.sources import domainnet, imagenet, wilds

    for source, spec in wilds.SPECS.items():
        needed = {f"{source}_v{spec.version}/{f}" for f in [f"RELEASE_v{spec.version}.txt", *spec.csvs]}
        if spec.image_dir:
            needed.add(f"{source}_v{spec.version}/{spec.image_dir}/")
        assert set(SHIPPED.part(source).check[0]) == needed
    for variant, folder in imagenet.VARIANTS.items():
        part = SHIPPED.part(variant)
        assert part.check == ((f"{folder}/",),) and any(f.to == folder for f in part.files)
    for domain in domainnet.DOMAINS:
        part = SHIPPED.part(f"domainnet_{domain}")
        assert sorted(f.to for f in part.files) == sorted(
            [f"domainnet/{domain}", f"domainnet/{domain}_test.txt", f"domainnet/{domain}_train.txt"])


def test_every_source_maps_onto_manifest_parts() -> None:
    from pipeline.data.sources import cifar, domainnet, imagenet

    others = [d for d in domainnet.DOMAINS if d != "clipart"]
    everything = {"cifar10": {"ood": list(cifar.OOD_SETS)}, "imagenet": {"ood": list(imagenet.VARIANTS)},
                  "domainnet": {"id_domain": "clipart", "ood_domains": others}}
    used = set()
    for source in SOURCES:
        for name in parts_for(source, everything.get(source)):
            SHIPPED.part(name)
            used.add(name)
    assert used == set(SHIPPED.parts)
    assert set(WILDS_SOURCES) <= set(SOURCES)
    for part in SHIPPED.parts.values():
        for file in part.files:
            assert file.checksum_source or not (file.md5 or file.sha256)
