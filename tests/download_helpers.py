"""Shared pieces of the download tests: fast transfer options, one-part manifests, real archive bytes."""
from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import yaml

from pipeline.download.manifest import Manifest, parse_manifest
from pipeline.download.transfer import TransferOptions

FAST = TransferOptions(timeout=2.0, rounds=2, backoff=0.0, chunk_size=16 * 1024, log_every=0.0, progress_bar=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def part_spec(urls: list[str], *, name: str = "blob.bin", to: str = "blob/blob.bin", member: str | None = None,
              check: list[list[str]] | None = None, **fields) -> dict:
    """The mapping form of a one-file part named ``part`` (a plain file, or an archive with ``member``)."""
    file = {"name": name, "urls": urls, **fields}
    if "sha256" in fields or "md5" in fields:
        file.setdefault("checksum_source", "the test that made the bytes")
    if member is not None:
        file["extract"] = {"member": member, "to": to, **file.pop("extract", {})}
    else:
        file["to"] = to
    return {"title": "Test part", "homepage": "http://127.0.0.1/", "layout": f"<root>/{to}",
            "check": check or [[to + ("/" if member is not None else "")]], "files": [file]}


def one_part(urls: list[str], *, limits: dict | None = None, **kwargs) -> Manifest:
    """A manifest of the one part ``part`` (:func:`part_spec`), with top-level archive ``limits`` if given."""
    return parse_manifest({"parts": {"part": part_spec(urls, **kwargs)}, **({"limits": limits} if limits else {})},
                          "test manifest")


def write_manifest(path: Path, parts: dict[str, dict], limits: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"parts": parts, **({"limits": limits} if limits else {})}, sort_keys=False))
    return path


def tar_bytes(entries: list[tuple], compression: str = "") -> bytes:
    """A tar (``compression``: "" or "gz") of entries ``(name, bytes)``, ``(name, "sym"|"hard", target)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if len(entry) == 3:
                info.type = tarfile.SYMTYPE if entry[1] == "sym" else tarfile.LNKTYPE
                info.linkname = entry[2]
                tar.addfile(info)
            else:
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buf.getvalue()


def zip_bytes(entries: list[tuple]) -> bytes:
    """A zip of entries ``(name, bytes)`` or ``(name, "sym", target)`` (a Unix symlink entry)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry[0])
            if len(entry) == 3:
                info.create_system = 3   # Unix, so the mode bits mean what they say
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, entry[2])
            else:
                zf.writestr(info, entry[1])
    return buf.getvalue()


def pack_folder(folder: Path, fmt: str) -> bytes:
    """``folder`` (and everything under it) as a tar.gz or zip whose top-level entry is ``folder.name``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = [(p.relative_to(folder.parent).as_posix(), p.read_bytes()) for p in files]
    return tar_bytes(entries, "gz") if fmt == "tar.gz" else zip_bytes(entries)
