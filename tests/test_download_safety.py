"""Downloads that go wrong, against a real HTTP server on 127.0.0.1 (issue 22, classes 1, 2, 8 and 9).

1. A failed download never touches the lock file: an HTML page served with 200, an archive that is
   refused (unsafe, damaged, over its cap) leave ``checksums.lock`` byte for byte as it was, and the
   real file downloads afterwards and is pinned.
2. A resume never splices two versions of a file: it sends ``If-Range`` with the validator the
   server gave (``ETag`` or ``Last-Modified``) and restarts from zero when the file changed; a
   damaged compressed archive is one line, not a ``zlib.error`` traceback.
8. An archive may not unpack to more than its caps (total size, expansion ratio), both settable
   in the manifest.
9. A full disk is reported as a full disk. The mechanisms are real: ``/dev/full`` (the kernel's
   ENOSPC on every write) where the partial download goes, the file system's real free space
   against a file's or an archive's declared size, and a tiny tmpfs mounted in a user+mount
   namespace (``unshare -rm``; skipped where the kernel does not allow one). Nothing is mocked.
"""
from __future__ import annotations

import email.utils
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from download_helpers import FAST, one_part, part_spec, sha256, tar_bytes, write_manifest, zip_bytes

from pipeline.download.datasets import ensure_parts, marker_path
from pipeline.download.disk import DiskFullError
from pipeline.download.errors import DownloadError, ManifestError, MirrorsFailedError, UnsafeArchiveError
from pipeline.download.extract import ArchiveError, ArchiveLimitError
from pipeline.download.manifest import parse_manifest

RUNNER = Path(__file__).resolve().parent / "download_runner.py"
PAYLOAD = os.urandom(300_000)
GOOD = [("payload/a.txt", b"alpha\n"), ("payload/sub/b.bin", PAYLOAD)]
OTHER_ENTRY = {"other/file.bin": {"sha256": "1" * 64, "size": 1, "url": "http://127.0.0.1/other"}}
HTML = b"<!DOCTYPE html>\n<html><head><title>Service unavailable</title></head><body>Try later</body></html>\n"
HUGE = {"max_extracted_size": 2**62, "max_expansion_ratio": 1e12}   # limits out of the way


def ensure(manifest, root: Path, lock: Path, **kwargs) -> dict[str, str]:
    return ensure_parts(["part"], root, manifest=manifest, lock=lock, options=FAST, **kwargs)


def a_lock(tmp_path: Path) -> tuple[Path, bytes]:
    """A lock file that already pins another file; a failed download must leave these bytes."""
    lock = tmp_path / "data" / "checksums.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(OTHER_ENTRY, indent=2, sort_keys=True) + "\n")
    return lock, lock.read_bytes()


def nothing_complete(root: Path, dest: str) -> None:
    assert not marker_path(root, "part").exists() and not (root / dest).exists()


def one_line(error: BaseException, *needed: str) -> str:
    message = str(error)
    assert "\n" not in message and all(n in message for n in needed), message
    assert "delete it and re-run" not in message and "weights_only=False" not in message, message
    return message


# --- 1. the lock file pins only downloads that passed every check ------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/html; charset=utf-8"], ids=["sniffed", "content-type"])
def test_html_page_served_with_200_is_not_pinned(server, tmp_path: Path, content_type: str | None) -> None:
    """An error page with status 200 where an unpublished archive should be: refused, the lock untouched, and
    the real archive, once served, downloads and is pinned."""
    real = zip_bytes(GOOD)
    headers = {"Content-Type": content_type} if content_type else {}
    url = server.add("/ImageNet-Sketch.zip", HTML, headers=headers)
    manifest = one_part([url], name="ImageNet-Sketch.zip", member="payload", to="sketch")
    lock, before = a_lock(tmp_path)
    with pytest.raises(MirrorsFailedError) as err:
        ensure(manifest, tmp_path / "a", lock)
    one_line(err.value, "ImageNet-Sketch.zip", url, "served an HTML page with status 200", "Place it by hand",
             "re-run later")
    assert "network" not in str(err.value)
    assert lock.read_bytes() == before
    nothing_complete(tmp_path / "a", "sketch")

    server.routes["/ImageNet-Sketch.zip"].body = real
    server.routes["/ImageNet-Sketch.zip"].headers = {}
    assert ensure(manifest, tmp_path / "a", lock) == {"part": "downloaded"}
    assert (tmp_path / "a/sketch/sub/b.bin").read_bytes() == PAYLOAD
    entries = json.loads(lock.read_text())
    assert entries == {**OTHER_ENTRY, "part/ImageNet-Sketch.zip": {"sha256": sha256(real), "size": len(real),
                                                                   "url": url}}


def _truncated_targz() -> bytes:
    data = tar_bytes(GOOD, "gz")
    return data[: len(data) // 2]


REFUSED = {
    # an archive that cannot be read, an unsafe one, one over its cap: each would have been pinned before
    "damaged": (_truncated_targz, {}, ArchiveError, ["is damaged or not a tar archive",
                                                     "re-run to download it again"]),
    "unsafe": (lambda: tar_bytes([("payload/ok.txt", b"ok"), ("payload/../../evil.txt", b"x")]), {},
               UnsafeArchiveError, ["'..'", "this is not the published archive: report"]),
    "over its cap": (lambda: tar_bytes(GOOD), {"max_extracted_size": 100_000}, ArchiveLimitError,
                     ["max_extracted_size", "otherwise report"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_archive_leaves_the_lock_as_it_was(server, tmp_path: Path, case: str) -> None:
    make, limits, error, needed = REFUSED[case]
    url = server.add("/waterbirds.tar.gz", make())
    lock, before = a_lock(tmp_path)
    root = tmp_path / "raw"
    with pytest.raises(error) as err:
        ensure(one_part([url], name="waterbirds.tar.gz", member="payload", to="wb", limits=limits), root, lock)
    one_line(err.value, "waterbirds.tar.gz", url, "the download was deleted, nothing was put in place",
             f"{lock} was left as it was", *needed)
    assert lock.read_bytes() == before
    nothing_complete(root, "wb")
    assert not [p.name for p in (root / ".partial/part").iterdir() if not p.name.startswith(".")]

    good = tar_bytes(GOOD, "gz")   # the real archive: downloads, and is the one pinned
    server.routes["/waterbirds.tar.gz"].body = good
    assert ensure(one_part([url], name="waterbirds.tar.gz", member="payload", to="wb"), root, lock) == {
        "part": "downloaded"}
    assert json.loads(lock.read_text())["part/waterbirds.tar.gz"]["sha256"] == sha256(good)


def test_a_part_is_pinned_only_when_all_its_files_passed(server, tmp_path: Path) -> None:
    """The first file of a part verified, the second refused: neither is pinned."""
    first = os.urandom(10_000)
    spec = part_spec([server.add("/first.bin", first)], name="first.bin", to="x/first.bin")
    spec["files"].append({"name": "second.tar", "urls": [server.add("/second.tar", _truncated_targz())],
                          "extract": {"member": "payload", "to": "x/second"}})
    lock, before = a_lock(tmp_path)
    with pytest.raises(ArchiveError):
        ensure(parse_manifest({"parts": {"part": spec}}), tmp_path / "raw", lock)
    assert lock.read_bytes() == before


# --- 2. a resume never splices two versions -----------------------------------------------------------------

@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_resume_sends_if_range_and_restarts_when_the_file_changed(server, tmp_path: Path, validator: str) -> None:
    """The connection drops after 200 kB of version 1; the file is then replaced by version 2 of the same size.
    The resume carries the validator of version 1, gets the whole of version 2, and nothing of version 1 is
    kept (a plain tar: spliced, it would unpack without any error)."""
    v1, v2 = tar_bytes([("payload/x.bin", os.urandom(400_000))]), tar_bytes([("payload/x.bin", os.urandom(400_000))])
    assert len(v1) == len(v2)
    url = server.add("/ds.tar", v1, truncate_at=200_000, then=v2, change_after=1, **{validator: True})
    lock = tmp_path / "checksums.lock"
    root = tmp_path / "raw"
    ensure(one_part([url], name="ds.tar", member="payload", to="ds"), root, lock)   # nothing published
    first_validator = (f'"{sha256(v1)[:24]}"' if validator == "etag"
                       else email.utils.formatdate(1_700_000_000, usegmt=True))
    assert [(r.range, r.if_range) for r in server.requests] == [(None, None), ("bytes=200000-", first_validator)]
    assert (root / "ds/x.bin").read_bytes() == v2[512:512 + 400_000]
    assert json.loads(lock.read_text())["part/ds.tar"]["sha256"] == sha256(v2)
    assert server.bytes_sent == 200_000 + len(v2)


def test_resume_checks_the_validator_even_when_the_server_ignores_if_range(server, tmp_path: Path) -> None:
    """A server that answers 206 whatever If-Range says: the 206's own ETag shows the file changed."""
    v1, v2 = os.urandom(300_000), os.urandom(300_000)
    url = server.add("/blob.bin", v1, truncate_at=100_000, then=v2, change_after=1, etag=True, honour_if_range=False)
    root = tmp_path / "raw"
    ensure(one_part([url]), root, tmp_path / "checksums.lock")
    assert [r.range for r in server.requests] == [None, "bytes=100000-", None]   # the 206 tail was not used
    assert (root / "blob/blob.bin").read_bytes() == v2


def test_resume_after_a_restart_uses_the_recorded_validator(server, tmp_path: Path) -> None:
    """The half a killed run left, with the ETag it came with; the host has a new version since."""
    v1, v2 = os.urandom(200_000), os.urandom(200_000)
    url = server.add("/blob.bin", v2, etag=True)
    stage = tmp_path / "raw/.partial/part"
    stage.mkdir(parents=True)
    (stage / "blob.bin.part").write_bytes(v1[:80_000])
    old = f'"{sha256(v1)[:24]}"'
    (stage / "blob.bin.part.json").write_text(json.dumps({"url": url, "variant": "file", "total": len(v1),
                                                          "etag": old, "last_modified": None}))
    ensure(one_part([url]), tmp_path / "raw", tmp_path / "checksums.lock")
    assert [(r.range, r.if_range) for r in server.requests] == [("bytes=80000-", old)]
    assert (tmp_path / "raw/blob/blob.bin").read_bytes() == v2


def test_without_a_validator_or_checksum_a_broken_transfer_restarts(server, tmp_path: Path) -> None:
    """No ETag, no Last-Modified, nothing published: nothing could tell a resumed tail from another version."""
    v1, v2 = os.urandom(300_000), os.urandom(300_000)
    url = server.add("/blob.bin", v1, truncate_at=100_000, then=v2, change_after=1)
    ensure(one_part([url]), tmp_path / "raw", tmp_path / "checksums.lock")
    assert [r.range for r in server.requests] == [None, None]
    assert (tmp_path / "raw/blob/blob.bin").read_bytes() == v2


def test_resumed_file_that_fails_its_published_checksum_is_fetched_again_from_zero(server, tmp_path: Path) -> None:
    """A server without validators changed the file mid-resume; the published checksum catches the splice and
    the file is fetched again whole, in the same run."""
    v1, v2 = os.urandom(300_000), os.urandom(300_000)
    url = server.add("/blob.bin", v1, truncate_at=100_000, then=v2, change_after=1)
    ensure(one_part([url], sha256=sha256(v2), size=len(v2)), tmp_path / "raw", tmp_path / "checksums.lock")
    assert [r.range for r in server.requests] == [None, "bytes=100000-", None]
    assert (tmp_path / "raw/blob/blob.bin").read_bytes() == v2


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_spliced_archive_is_one_line_not_a_traceback(server, tmp_path: Path, fmt: str) -> None:
    """The first half of one version and the second half of another (what a resume without If-Range made)."""
    make = (lambda e: tar_bytes(e, "gz")) if fmt == "tar.gz" else zip_bytes
    v1 = make([("payload/x.bin", os.urandom(200_000))])
    v2 = make([("payload/x.bin", os.urandom(200_000))])
    url = server.add(f"/ds.{fmt}", v1[: len(v1) // 2] + v2[len(v1) // 2:])
    lock, before = a_lock(tmp_path)
    with pytest.raises(ArchiveError) as err:
        ensure(one_part([url], name=f"ds.{fmt}", member="payload", to="ds"), tmp_path / "raw", lock)
    one_line(err.value, f"ds.{fmt} is damaged", "re-run to download it again")
    assert lock.read_bytes() == before


# --- 8. caps on what an archive may unpack to ---------------------------------------------------------------

def _zeros_targz(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("payload/zeros.bin")
        info.size = n
        tar.addfile(info, io.BytesIO(bytes(n)))
    return buf.getvalue()


def _zeros_zip(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("payload/zeros.bin", bytes(n))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archive_bomb_is_refused_with_the_default_caps(server, tmp_path: Path, fmt: str) -> None:
    """About 100 kB that unpack to 100 MiB (ratio ~1000): refused before the big member is written."""
    n = 100 * 2**20
    data = _zeros_targz(n) if fmt == "tar.gz" else _zeros_zip(n)
    assert len(data) < 2**20
    url = server.add(f"/bomb.{fmt}", data)
    root = tmp_path / "raw"
    with pytest.raises(ArchiveLimitError) as err:
        ensure(one_part([url], name=f"bomb.{fmt}", member="payload", to="ds"), root, tmp_path / "lock")
    one_line(err.value, f"refusing to extract bomb.{fmt}", "100.0 MiB", "more than 20 times its",
             "if it really unpacks to that much, raise max_expansion_ratio under limits: in test manifest",
             "otherwise report", url)
    nothing_complete(root, "ds")
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 2**20   # nothing big was written


def test_caps_are_set_in_the_manifest(server, tmp_path: Path) -> None:
    data = tar_bytes(GOOD, "gz")   # ~300 kB of random bytes: ratio ~1
    url = server.add("/ds.tar.gz", data)
    kwargs = {"name": "ds.tar.gz", "member": "payload", "to": "ds"}
    with pytest.raises(ArchiveLimitError) as err:   # a total cap for every archive
        ensure(one_part([url], limits={"max_extracted_size": 200_000}, **kwargs), tmp_path / "a", tmp_path / "lock")
    one_line(err.value, "ds.tar.gz", "more than max_extracted_size 195.3 KiB", "raise max_extracted_size under limits:")
    # the same key in the file's extract: overrides it for that archive
    manifest = one_part([url], limits={"max_extracted_size": 200_000}, extract={"max_extracted_size": 10**6},
                        **kwargs)
    assert ensure(manifest, tmp_path / "b", tmp_path / "lock") == {"part": "downloaded"}

    text = tar_bytes([("payload/a.txt", b"the same line again\n" * 20_000)], "gz")   # ~400 kB of text, ratio ~200
    url = server.add("/text.tar.gz", text)
    kwargs = {"name": "text.tar.gz", "member": "payload", "to": "t"}
    assert ensure(one_part([url], **kwargs), tmp_path / "c", tmp_path / "lock") == {"part": "downloaded"}  # grace
    with pytest.raises(ArchiveLimitError) as err:
        ensure(one_part([url], limits={"max_expansion_ratio": 50, "ratio_grace": 0}, **kwargs), tmp_path / "d",
               tmp_path / "lock")
    one_line(err.value, "text.tar.gz", "more than 50 times its", "max_expansion_ratio")
    with pytest.raises(ManifestError, match=r"limits.max_expansion_ratio: expected a positive number"):
        one_part([url], limits={"max_expansion_ratio": 0}, **kwargs)
    with pytest.raises(ManifestError, match=r"limits: unknown key"):
        one_part([url], limits={"max_size": 1}, **kwargs)


# --- 9. a full disk is a full disk --------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_disk_full_while_downloading_is_not_a_mirror_failure(server, tmp_path: Path) -> None:
    """Every write where the download goes fails with ENOSPC (the partial file is /dev/full): one line saying
    the disk is full, no second mirror tried, nothing about the network."""
    data = os.urandom(100_000)
    first, second = server.add("/a/blob.bin", data), server.add("/b/blob.bin", data)
    stage = tmp_path / "raw/.partial/part"
    stage.mkdir(parents=True)
    (stage / "blob.bin.part").symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as err:
        ensure(one_part([first, second], sha256=sha256(data)), tmp_path / "raw", tmp_path / "lock")
    message = one_line(err.value, "no space left on the device while writing", "blob.bin.part", "free space there",
                       "re-run", "the partial download is kept and resumes")
    assert "mirror" not in message and "network" not in message
    assert server.hits("/a/blob.bin") == 1 and server.hits("/b/blob.bin") == 0


def test_file_larger_than_the_free_space_is_refused_before_any_request(server, tmp_path: Path) -> None:
    url = server.add("/big.bin", b"x")
    size = shutil.disk_usage(tmp_path).free + 2**40
    with pytest.raises(DiskFullError) as err:
        ensure(one_part([url], name="big.bin", size=size), tmp_path / "raw", tmp_path / "lock")
    one_line(err.value, "not enough free space to download big.bin", "needed", "free in", "free space there")
    assert server.requests == []


def _zip_declaring(at_least: int) -> bytes:
    """A small zip whose directory declares members of ~4 GiB each, ``at_least`` bytes in all (sizes patched)."""
    each = 0xFFFFFFF0
    data = bytearray(zip_bytes([(f"payload/{i}.bin", b"x") for i in range(at_least // each + 1)]))
    offset = data.find(b"PK\x01\x02")
    while offset != -1:   # each central directory entry: the uncompressed size is at +24
        data[offset + 24:offset + 28] = struct.pack("<I", each)
        offset = data.find(b"PK\x01\x02", offset + 4)
    return bytes(data)


def test_archive_declaring_more_than_the_free_space_is_not_unpacked(server, tmp_path: Path) -> None:
    """Checked against the real free space before a byte is unpacked; the verified archive is kept, so a re-run
    (after freeing space) unpacks it without downloading it again."""
    data = _zip_declaring(shutil.disk_usage(tmp_path).free + 2**30)
    assert sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist()) > shutil.disk_usage(tmp_path).free
    url = server.add("/big.zip", data)
    manifest, root = one_part([url], name="big.zip", member="payload", to="big", limits=HUGE), tmp_path / "raw"
    for _ in range(2):
        with pytest.raises(DiskFullError) as err:
            ensure(manifest, root, tmp_path / "lock")
        one_line(err.value, "not enough free space to unpack big.zip", "free space there",
                 "the verified download", "is kept, so the re-run only unpacks it")
    assert server.hits("/big.zip") == 1 and (root / ".partial/part/big.zip").read_bytes() == data
    assert not (tmp_path / "lock").exists()


def _tmpfs_works(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("where", ["download", "extract"])
def test_a_tiny_real_disk_is_reported_as_full(server, tmp_path: Path, where: str) -> None:
    """The dataset root is a 1 MiB tmpfs (its own mount namespace): a 3 MiB download (its Content-Length checked
    against the free space) and a 3 kB archive of 3 MiB of zeros (the disk fills up while unpacking) each end
    with one line saying the disk is full, from the download process itself."""
    if not _tmpfs_works(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user+mount namespace here (unshare -rm)")
    if where == "download":
        url = server.add("/blob.bin", os.urandom(3 * 2**20))
        spec, needed = part_spec([url]), ["not enough free space to download blob.bin"]
    else:
        url = server.add("/ds.tar.gz", _zeros_targz(3 * 2**20))
        spec = part_spec([url], name="ds.tar.gz", member="payload", to="ds")
        needed = ["no space left on the device while unpacking ds.tar.gz", "is kept, so the re-run only unpacks it"]
    manifest = write_manifest(tmp_path / "manifest.yaml", {"part": spec}, limits=HUGE)
    root = tmp_path / "raw"
    root.mkdir()
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(root), sys.executable, str(RUNNER),
                           str(manifest), str(root), str(tmp_path / "lock"), "part"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == DiskFullError.exit_code != 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(n in lines[0] for n in [*needed, "free space there"]), lines[0]
    assert "mirror" not in lines[0] and "network" not in lines[0] and "damaged" not in lines[0]
    assert not (tmp_path / "lock").exists()


def test_every_new_error_is_a_download_error() -> None:
    """The callers (the download stage, fetch) print any DownloadError as its one line; a full disk is never a
    mirror failure."""
    for cls in (ArchiveError, ArchiveLimitError, UnsafeArchiveError, DiskFullError):
        assert issubclass(cls, DownloadError) and not issubclass(cls, MirrorsFailedError)
