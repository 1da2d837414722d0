"""Safe extraction of tar (plain, gz, bz2, xz) and zip archives into a new folder.

Nothing in an archive may land outside the folder it is unpacked into. Every member is checked
before it is written, and the archive is refused (:class:`UnsafeArchiveError`, one line naming the
member) for: an absolute path (``/etc/x``, ``C:/x``), a ``..`` component, a symbolic link whose
target is absolute or resolves outside, a hard link to a path outside, or a device/FIFO member.
Tar extraction also runs with Python's ``filter="data"`` (checks against the real paths on disk,
symlinks followed), zip symlinks are created last and checked the same way, so a chain of
individually harmless links cannot escape either.

Archives unpack into a temporary sibling of the destination that is renamed onto it only when
complete: a refused or interrupted extraction leaves no folder that looks finished. The format is
told from the content, not the name (ImageNetV2's ``.tar.gz`` is an uncompressed tar).
"""
from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.download.errors import DownloadError, UnsafeArchiveError

_DRIVE = re.compile(r"[A-Za-z]:[/\\]")
_COPY_CHUNK = 1 << 20


def safe_extract(archive: Path, dest: Path, *, label: str) -> None:
    """Unpack ``archive`` into the new folder ``dest`` (which must not exist), all or nothing."""
    if dest.exists():
        raise DownloadError(f"{label}: cannot extract {archive.name}: {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        with open(archive, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            _unzip(archive, tmp, label)
        else:
            _untar(archive, tmp, label)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse(label: str, archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refusing to extract {archive.name}: member {member!r} {why}; nothing was "
                              f"put in place. This is not the published archive: delete {archive} and report its URL")


def _check_name(label: str, archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or a refusal for absolute paths and ``..`` components."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise _refuse(label, archive, name, "has an absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts or ".." in name.split("\\"):
        raise _refuse(label, archive, name, "has a '..' path component")
    return path


def _check_link(label: str, archive: Path, name: str, target: str, hard: bool) -> None:
    """Refuse a link whose target is absolute or, resolved as written, leaves the extraction folder."""
    kind = "hard link" if hard else "symlink"
    if target.startswith(("/", "\\")) or _DRIVE.match(target):
        raise _refuse(label, archive, name, f"is a {kind} to the absolute path {target!r}")
    # A symlink's target is relative to the link's folder, a hard link's to the archive's root.
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise _refuse(label, archive, name, f"is a {kind} pointing outside the archive ({target!r})")


def _untar(archive: Path, into: Path, label: str) -> None:
    def checked(members):
        for member in members:
            _check_name(label, archive, member.name)
            if member.issym() or member.islnk():
                _check_link(label, archive, member.name, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise _refuse(label, archive, member.name, "is a device or FIFO")
            yield member

    try:
        with tarfile.open(archive, "r:*") as tar:
            # Streaming over the members (not getmembers() first) reads a compressed archive once.
            tar.extractall(into, members=checked(tar), filter="data")
    except tarfile.FilterError as e:   # what the data filter sees on disk that the names did not show
        raise _refuse(label, archive, e.tarinfo.name, str(e)) from None
    except tarfile.TarError as e:
        raise DownloadError(f"{label}: {archive.name} is not a zip and not a readable tar archive ({e}); "
                            "delete it and re-run") from None


def _unzip(archive: Path, into: Path, label: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{label}: {archive.name} is a damaged zip archive ({e}); delete it and re-run") from None
    links: list[tuple[PurePosixPath, str]] = []
    with zf:
        for info in zf.infolist():
            path = _check_name(label, archive, info.filename)
            if not path.parts:
                raise _refuse(label, archive, info.filename, "has an empty path")
            if stat.S_ISLNK(info.external_attr >> 16):   # Unix symlink: its content is the target
                target = zf.read(info).decode("utf-8", "surrogateescape")
                _check_link(label, archive, info.filename, target, hard=False)
                links.append((path, target))
                continue
            out = into.joinpath(*path.parts)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
            except (zipfile.BadZipFile, EOFError) as e:   # CRC mismatch, truncated member
                raise DownloadError(f"{label}: {archive.name} is a damaged zip archive ({e}); delete it and "
                                    "re-run") from None
    # Links last, so no file is ever written through one; then check where each really points.
    root = os.path.realpath(into)
    for path, target in links:
        link = into.joinpath(*path.parts)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        real = os.path.realpath(link)
        if real != root and not real.startswith(root + os.sep):
            raise _refuse(label, archive, str(path), f"is a symlink resolving outside the archive ({target!r})")
