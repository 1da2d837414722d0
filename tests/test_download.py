"""Download library against a real HTTP server on 127.0.0.1: verify, resume, mirrors, safe extraction, lock.

Every test serves fabricated bytes from :class:`http_server.LoopbackServer` and points a
one-part manifest at it (no monkeypatched network code, no host outside this machine).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from download_helpers import FAST, md5, one_part, part_spec, sha256, tar_bytes, write_manifest, zip_bytes

from pipeline.download.datasets import ensure_parts, marker_path
from pipeline.download.errors import (
    ChecksumError,
    ManifestError,
    MirrorsFailedError,
    NoNetworkError,
    UnsafeArchiveError,
)
from pipeline.download.manifest import parse_manifest

RUNNER = Path(__file__).resolve().parent / "download_runner.py"
PAYLOAD = os.urandom(300_000)
ARCHIVE_FILES = [("payload/a.txt", b"alpha\n"), ("payload/sub/b.bin", PAYLOAD)]


def ensure(manifest, root: Path, lock: Path | None = None, **kwargs) -> dict[str, str]:
    return ensure_parts(["part"], root, manifest=manifest, lock=lock or root.parent / "checksums.lock",
                        options=FAST, **kwargs)


def nothing_complete(root: Path, dest: str) -> None:
    """No marker, no destination, no finished or partial file left in the staging folder."""
    assert not marker_path(root, "part").exists()
    assert not (root / dest).exists()
    staged = [p.name for p in (root / ".partial" / "part").glob("*")] if (root / ".partial" / "part").exists() else []
    assert not [n for n in staged if not n.startswith(".")], staged


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again on exit: connecting there is refused


# --- fresh download, verification ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
def test_fresh_download_verifies_extracts_and_marks(server, tmp_path: Path, fmt: str) -> None:
    data = zip_bytes(ARCHIVE_FILES) if fmt == "zip" else tar_bytes(ARCHIVE_FILES, "gz" if fmt == "tar.gz" else "")
    url = server.add(f"/ds.{fmt}", data)
    manifest = one_part([url], name=f"ds.{fmt}", member="payload", to="ds", size=len(data), sha256=sha256(data))
    root = tmp_path / "raw"
    assert ensure(manifest, root) == {"part": "downloaded"}
    assert (root / "ds/a.txt").read_bytes() == b"alpha\n" and (root / "ds/sub/b.bin").read_bytes() == PAYLOAD
    marker = json.loads(marker_path(root, "part").read_text())
    assert marker["files"][f"ds.{fmt}"] == {"url": url, "sha256": sha256(data), "size": len(data)}
    assert not (root / ".partial" / "part").exists()              # staging cleaned up, archive not kept
    assert not (tmp_path / "checksums.lock").exists()             # published checksum: the lock is not needed


@pytest.mark.parametrize("what", ["sha256", "md5"])
def test_bad_checksum_is_refused_and_nothing_looks_complete(server, tmp_path: Path, what: str) -> None:
    data = tar_bytes(ARCHIVE_FILES)
    url = server.add("/ds.tar", data)
    wrong = {"sha256": "0" * 64, "md5": "f" * 32}[what]
    manifest = one_part([url], name="ds.tar", member="payload", to="ds", **{what: wrong})
    root = tmp_path / "raw"
    with pytest.raises(ChecksumError) as err:
        ensure(manifest, root)
    message = str(err.value)
    actual = {"sha256": sha256(data), "md5": md5(data)}[what]
    assert "\n" not in message and url in message and "ds.tar" in message
    assert f"expected {what} {wrong}" in message and f"got {actual}" in message
    nothing_complete(root, "ds")


def test_wrong_size_is_refused_before_the_body(server, tmp_path: Path) -> None:
    """A host announcing another size serves another file: not downloaded, the next mirror is tried."""
    data = tar_bytes(ARCHIVE_FILES)
    url = server.add("/ds.tar", data)
    root = tmp_path / "raw"
    with pytest.raises(MirrorsFailedError, match=f"serves {len(data)} bytes, expected {len(data) + 1}"):
        ensure(one_part([url], name="ds.tar", member="payload", to="ds", size=len(data) + 1), root)
    nothing_complete(root, "ds")


# --- resume -------------------------------------------------------------------------------------------------

def test_sigkill_midway_then_rerun_resumes_with_range(server, tmp_path: Path) -> None:
    """A real download process killed with SIGKILL midway; the re-run asks for the rest only."""
    data = os.urandom(2 * 1024 * 1024)
    url = server.add("/big.bin", data, delay=0.02, chunk=32 * 1024)   # ~1.3 s for the whole file
    manifest = write_manifest(tmp_path / "manifest.yaml", {"part": part_spec([url], size=len(data),
                                                                             sha256=sha256(data))})
    root, lock = tmp_path / "raw", tmp_path / "checksums.lock"
    partial = root / ".partial" / "part" / "blob.bin.part"
    args = [sys.executable, str(RUNNER), str(manifest), str(root), str(lock), "part"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 0.4 * len(data)):
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the transfer never got going"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = partial.stat().st_size
    assert 0 < kept < len(data) and not marker_path(root, "part").exists() and not (root / "blob").exists()

    server.routes["/big.bin"].delay = 0.0
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (root / "blob/blob.bin").read_bytes() == data and marker_path(root, "part").exists()
    ranges = server.range_requests("/big.bin")
    assert ranges and all(r.range == f"bytes={kept}-" for r in ranges[:1]), server.requests
    assert server.bytes_sent < 1.5 * len(data), (server.bytes_sent, len(data))


def test_connection_dropped_midway_resumes_in_process(server, tmp_path: Path) -> None:
    data = os.urandom(500_000)
    url = server.add("/blob.bin", data, truncate_at=200_000)   # first answer stops after 200 kB
    root = tmp_path / "raw"
    ensure(one_part([url], size=len(data), sha256=sha256(data)), root)
    assert (root / "blob/blob.bin").read_bytes() == data
    assert [r.range for r in server.requests] == [None, "bytes=200000-"]
    assert server.bytes_sent == len(data)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    data = os.urandom(400_000)
    url = server.add("/blob.bin", data, ignore_range=True)
    root = tmp_path / "raw"
    # What an interrupted earlier run left: the first half, from this file's mirrors.
    stage = root / ".partial" / "part"
    stage.mkdir(parents=True)
    (stage / "blob.bin.part").write_bytes(data[:200_000])
    (stage / "blob.bin.part.json").write_text(json.dumps({"url": url, "variant": "file", "total": len(data)}))
    ensure(one_part([url], size=len(data), sha256=sha256(data)), root)
    assert [r.range for r in server.requests] == ["bytes=200000-"]   # asked to resume, got a 200 ...
    assert (root / "blob/blob.bin").read_bytes() == data              # ... and rewrote the file from zero


def test_complete_partial_is_not_fetched_again(server, tmp_path: Path) -> None:
    """Killed after the last byte, before verification: nothing more to transfer."""
    data = os.urandom(100_000)
    for size, expected_requests in ((len(data), []), (None, [f"bytes={len(data)}-"])):
        url = server.add("/blob.bin", data)
        root = tmp_path / str(size)
        stage = root / ".partial" / "part"
        stage.mkdir(parents=True)
        (stage / "blob.bin.part").write_bytes(data)
        (stage / "blob.bin.part.json").write_text(json.dumps({"url": url, "variant": "file", "total": len(data)}))
        server.reset()
        ensure(one_part([url], sha256=sha256(data), **({"size": size} if size else {})), root)
        assert [r.range for r in server.requests] == expected_requests   # known size: no request; else a 416
        assert (root / "blob/blob.bin").read_bytes() == data and server.bytes_sent == 0


# --- mirrors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [{"status": 404}, {"status": 503}, {"close": True}, {"stall": 3.0}],
                         ids=["404", "503", "closes", "timeout"])
def test_first_mirror_failing_moves_to_the_next(server, tmp_path: Path, failure: dict) -> None:
    data = os.urandom(50_000)
    bad, good = server.add("/a/blob.bin", data, **failure), server.add("/b/blob.bin", data)
    root = tmp_path / "raw"
    ensure(one_part([bad, good], size=len(data), sha256=sha256(data)), root)
    assert (root / "blob/blob.bin").read_bytes() == data
    assert server.hits("/a/blob.bin") == 1 and server.hits("/b/blob.bin") == 1


def test_transient_503_is_retried_within_bounds(server, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    url = server.add("/blob.bin", data, status=503, fail_times=1)   # one mirror, up once on the second pass
    ensure(one_part([url], sha256=sha256(data)), tmp_path / "raw")
    assert server.hits("/blob.bin") == 2


# --- safe extraction ----------------------------------------------------------------------------------------

UNSAFE = {
    "tar-dotdot": ("tar", [("payload/ok.txt", b"ok"), ("payload/../../evil.txt", b"x")], "'..'"),
    "tar-absolute": ("tar", [("payload/ok.txt", b"ok"), ("/tmp/evil-absolute.txt", b"x")], "absolute path"),
    "tar-symlink-absolute": ("tar", [("payload/ok.txt", b"ok"), ("payload/link", "sym", "/etc")], "absolute path"),
    "tar-symlink-outside": ("tar", [("payload/ok.txt", b"ok"), ("payload/link", "sym", "../../..")], "outside"),
    "tar-hardlink-outside": ("tar", [("payload/ok.txt", b"ok"), ("payload/hard", "hard", "../outside.txt")],
                             "outside"),
    "targz-dotdot": ("tar.gz", [("payload/ok.txt", b"ok"), ("../evil.txt", b"x")], "'..'"),
    "zip-dotdot": ("zip", [("payload/ok.txt", b"ok"), ("payload/../../evil.txt", b"x")], "'..'"),
    "zip-absolute": ("zip", [("payload/ok.txt", b"ok"), ("/tmp/evil-absolute.txt", b"x")], "absolute path"),
    "zip-symlink-absolute": ("zip", [("payload/ok.txt", b"ok"), ("payload/link", "sym", "/etc")], "absolute path"),
    "zip-symlink-outside": ("zip", [("payload/ok.txt", b"ok"), ("payload/link", "sym", "../../..")], "outside"),
    # Each link stays inside on its own; followed one after the other they leave the folder.
    "zip-symlink-chain": ("zip", [("payload/ok.txt", b"ok"), ("payload/here", "sym", "."),
                                  ("payload/up", "sym", "here/../..")], "outside"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archive_is_refused(server, tmp_path: Path, case: str) -> None:
    fmt, entries, why = UNSAFE[case]
    data = zip_bytes(entries) if fmt == "zip" else tar_bytes(entries, "gz" if fmt == "tar.gz" else "")
    url = server.add(f"/evil.{fmt}", data)
    root = tmp_path / "deep" / "raw"
    with pytest.raises(UnsafeArchiveError) as err:
        ensure(one_part([url], name=f"evil.{fmt}", member="payload", to="ds"), root)
    message = str(err.value)
    assert "\n" not in message and why in message and f"evil.{fmt}" in message
    nothing_complete(root, "ds")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not Path("/tmp/evil-absolute.txt").exists()
    assert not list((root / ".partial").rglob("payload"))   # the half-extracted folder is gone too


def test_archive_symlink_inside_is_kept(server, tmp_path: Path) -> None:
    entries = [("payload/real/x.txt", b"x"), ("payload/alias", "sym", "real")]
    for fmt, data in (("tar", tar_bytes(entries)), ("zip", zip_bytes(entries))):
        url = server.add(f"/ok.{fmt}", data)
        root = tmp_path / fmt
        ensure(one_part([url], name=f"ok.{fmt}", member="payload", to="ds"), root)
        assert (root / "ds/alias").is_symlink() and (root / "ds/alias/x.txt").read_bytes() == b"x"


# --- no network, data in place ------------------------------------------------------------------------------

def test_no_network_is_one_line_saying_what_to_place_where(tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{closed_port()}/a/ds.tar.gz", f"http://127.0.0.1:{closed_port()}/b/ds.tar.gz"]
    manifest = write_manifest(tmp_path / "manifest.yaml", {"part": part_spec(urls, name="ds.tar.gz",
                                                                             member="payload", to="ds")})
    root = tmp_path / "raw"
    done = subprocess.run([sys.executable, str(RUNNER), str(manifest), str(root), str(tmp_path / "lock"), "part"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == NoNetworkError.exit_code != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert "no network" in line and "connection refused" in line and all(u in line for u in urls)
    assert f"unpack its folder payload/ as {root / 'ds'}/" in line       # what to place where
    assert f"expected layout: {root}/ds" in line
    nothing_complete(root, "ds")


def test_data_in_place_makes_no_connection(server, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    url = server.add("/blob.bin", data)
    manifest, root = one_part([url], sha256=sha256(data)), tmp_path / "raw"
    assert ensure(manifest, root) == {"part": "downloaded"}
    server.reset()
    assert ensure(manifest, root) == {"part": "marker"}      # its own marker
    marker_path(root, "part").unlink()
    assert ensure(manifest, root) == {"part": "layout"}      # or data placed by hand
    assert server.requests == [] and server.bytes_sent == 0


def test_download_false_checks_placement_only(server, tmp_path: Path) -> None:
    url = server.add("/blob.bin", b"x")
    from pipeline.download.errors import ManualDataError

    with pytest.raises(ManualDataError, match=r"download is off: place it as .*raw/blob/blob.bin"):
        ensure(one_part([url]), tmp_path / "raw", download=False)
    assert server.requests == []


# --- lock file ----------------------------------------------------------------------------------------------

def test_lock_file_pins_the_first_download(server, tmp_path: Path) -> None:
    first = os.urandom(30_000)
    url = server.add("/blob.bin", first)
    lock = tmp_path / "data" / "checksums.lock"
    manifest = one_part([url])   # no published checksum
    ensure(manifest, tmp_path / "a", lock=lock)
    text = lock.read_text()
    assert json.loads(text) == {"part/blob.bin": {"sha256": sha256(first), "size": len(first), "url": url}}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    ensure(manifest, tmp_path / "b", lock=lock)   # the same bytes elsewhere: accepted
    assert (tmp_path / "b/blob/blob.bin").read_bytes() == first

    server.routes["/blob.bin"].body = os.urandom(30_000)   # the host now serves other bytes
    with pytest.raises(ChecksumError) as err:
        ensure(manifest, tmp_path / "c", lock=lock)
    message = str(err.value)
    assert "lock file" in message and url in message and "blob.bin" in message and sha256(first) in message
    assert sha256(server.routes["/blob.bin"].body) in message and "\n" not in message
    nothing_complete(tmp_path / "c", "blob")
    assert json.loads(lock.read_text())["part/blob.bin"]["sha256"] == sha256(first)   # unchanged


# --- progress, manifest ---------------------------------------------------------------------------------------

def test_progress_is_logged_with_bytes_rate_and_eta(server, tmp_path: Path, caplog) -> None:
    data = os.urandom(200_000)
    url = server.add("/blob.bin", data)
    with caplog.at_level(logging.INFO, logger="pipeline.download"):
        ensure(one_part([url], size=len(data), sha256=sha256(data)), tmp_path / "raw")
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines and "B/s" in lines[0] and "%" in lines[0] and "blob.bin" in lines[0]


def test_malformed_manifest_names_the_key() -> None:
    spec = part_spec(["http://127.0.0.1:1/x"], sha256="abc")
    with pytest.raises(ManifestError, match=r"parts.part.files\[0\].sha256: expected"):
        parse_manifest({"parts": {"part": spec}})
    spec = part_spec(["ftp://example/x"])
    with pytest.raises(ManifestError, match=r"urls\[0\].url: expected an http"):
        parse_manifest({"parts": {"part": spec}})
    spec = {**part_spec(["http://127.0.0.1:1/x"]), "colour": "red"}
    with pytest.raises(ManifestError, match="unknown key"):
        parse_manifest({"parts": {"part": spec}})
    spec = part_spec(["http://127.0.0.1:1/x"], to="../escape")
    with pytest.raises(ManifestError, match="relative path"):
        parse_manifest({"parts": {"part": spec}})
