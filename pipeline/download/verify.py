"""Verification of finished downloads: published checksums and sizes, else the lock file.

A file with a published MD5 or SHA-256 (``manifest.yaml`` records where each value comes from)
must match it. A file without one is trusted on its first download that passed every check: its
SHA-256, size and URL go into the lock file (default ``data/checksums.lock``, committed by the
user), and every later download of it, on any machine, must match that entry. Pinning is the
caller's last step (:func:`pin`), after :func:`verify` and whatever else the file must pass (an
archive unpacked completely, a checkpoint readable): a download that fails anywhere leaves the
lock file as it was. A mismatch is refused with one line naming the URL, the file, the expected
and the actual value; the caller deletes the download.

The lock file is JSON, ``{"<part>/<file>": {"sha256": ..., "size": ..., "url": ...}}``, keys
sorted, rewritten atomically under an exclusive lock so parallel download jobs do not lose entries.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.download.errors import ChecksumError, DownloadError
from pipeline.download.manifest import Expected
from pipeline.io import write_json

DEFAULT_LOCK = Path("data/checksums.lock")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Digest:
    """What was received: byte count and hashes of the whole file."""

    size: int
    sha256: str
    md5: str


class Hasher:
    """SHA-256 and MD5 of a stream, fed chunk by chunk while it is written (no second pass over the file)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sha256, self._md5, self.size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        self._md5.update(data)
        self.size += len(data)

    def prime(self, path: Path) -> None:
        """Start over from the bytes already in ``path`` (a partial file being resumed)."""
        self.reset()
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                self.update(chunk)

    def digest(self) -> Digest:
        return Digest(self.size, self._sha256.hexdigest(), self._md5.hexdigest())


def file_digest(path: Path) -> Digest:
    hasher = Hasher()
    hasher.prime(path)
    return hasher.digest()


class ChecksumLock:
    """The lock file: ``{"<part>/<file>": {"sha256", "size", "url"}}`` for files without a published checksum."""

    def __init__(self, path: str | Path = DEFAULT_LOCK):
        self.path = Path(path)

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def pin(self, key: str, digest: Digest, url: str) -> dict | None:
        """Record ``key`` unless it has an entry; returns that entry when it holds other bytes, else None.

        Read-modify-write under an exclusive lock; the file is replaced atomically, and only when it changes.
        """
        with self._exclusive():
            entries = self._read()
            entry = entries.get(key)
            if entry is not None:
                return None if _matches(entry, digest) else entry
            entries[key] = {"sha256": digest.sha256, "size": digest.size, "url": url}
            write_json(self.path, entries)
        return None

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise DownloadError(f"cannot read the checksum lock file {self.path} ({type(e).__name__}: {e}); "
                                "restore it from version control") from None
        if not isinstance(entries, dict) or not all(isinstance(v, dict) and "sha256" in v for v in entries.values()):
            raise DownloadError(f"{self.path} is not a checksum lock file (a JSON mapping of "
                                "'<part>/<file>' to {sha256, size, url}); restore it from version control")
        return entries

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # The file itself is replaced on every write, so a lock on it would not exclude a writer
        # that opened the new one: lock the directory that holds it instead.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing releases the lock


def _matches(entry: dict, got: Digest) -> bool:
    return got.sha256 == entry["sha256"] and got.size == entry.get("size", got.size)


DELETED = "the download was deleted and nothing was put in place"


def verify(label: str, key: str, url: str, got: Digest, expected: Expected, lock: ChecksumLock | None, *,
           kept: str = DELETED) -> bool:
    """Raise :class:`ChecksumError` unless ``got`` matches the published values, else the lock entry.

    ``label`` names the dataset part, ``key`` the file (``<part>/<file>``), ``kept`` what the caller
    does with a refused download. Returns True when ``got`` is still to be pinned (no published
    checksum, no lock entry yet): the caller calls :func:`pin` once every further check passed.
    """
    name = key.rsplit("/", 1)[-1]
    unchanged = f" and {lock.path} was left as it was" if lock is not None else ""

    def refuse(what: str, want: str | int, have: str | int, source: str) -> ChecksumError:
        return ChecksumError(f"{label}: {name} from {url} failed verification: expected {what} {want} ({source}), "
                             f"got {have}; {kept}{unchanged}. Re-run to download it again; if it fails again the "
                             "host serves other bytes: report it")

    source = expected.source or "manifest.yaml"
    if expected.size is not None and got.size != expected.size:
        raise refuse("size", f"{expected.size} bytes", f"{got.size} bytes", f"size in manifest.yaml, {source}")
    if expected.md5 and got.md5 != expected.md5:
        raise refuse("md5", expected.md5, got.md5, source)
    if expected.sha256 and got.sha256 != expected.sha256:
        raise refuse("sha256", expected.sha256, got.sha256, source)
    if expected.published or lock is None:
        return False
    entry = lock.get(key)
    if entry is None:
        return True
    if not _matches(entry, got):
        raise lock_mismatch(label, key, url, got, entry, lock, kept)
    return False


def pin(label: str, key: str, url: str, got: Digest, lock: ChecksumLock, *, kept: str = DELETED) -> None:
    """Record ``got`` in ``lock`` (trust on first download that passed every check).

    Raises :class:`ChecksumError` when another job pinned other bytes for ``key`` in the meantime.
    """
    entry = lock.pin(key, got, url)
    if entry is not None:
        raise lock_mismatch(label, key, url, got, entry, lock, kept)


def lock_mismatch(label: str, key: str, url: str, got: Digest, entry: dict, lock: ChecksumLock,
                  kept: str = DELETED) -> ChecksumError:
    name = key.rsplit("/", 1)[-1]
    return ChecksumError(
        f"{label}: {name} from {url} does not match the lock file: expected sha256 {entry['sha256']} "
        f"({entry.get('size')} bytes, recorded in {lock.path} from {entry.get('url')}), got {got.sha256} "
        f"({got.size} bytes); {kept}. If the host changed the file on purpose, delete the entry {key!r} from "
        f"{lock.path} and re-run; otherwise re-run to download it again, and report the host if it still differs")
