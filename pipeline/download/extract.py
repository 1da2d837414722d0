"""Safe extraction of tar (plain, gz, bz2, xz) and zip archives into a new folder.

Nothing in an archive may land outside the folder it is unpacked into. Every member is checked
before it is written, and the archive is refused (:class:`UnsafeArchiveError`, one line naming the
member) for: an absolute path (``/etc/x``, ``C:/x``), a ``..`` component, a symbolic link whose
target is absolute or resolves outside, a hard link to a path outside, or a device/FIFO member.
Tar extraction also runs with Python's ``filter="data"`` (checks against the real paths on disk,
symlinks followed), zip symlinks are created last and checked the same way, so a chain of
individually harmless links cannot escape either.

Nor may an archive unpack to more than its cap (:class:`ArchiveLimitError`): at most
``max_extracted_size`` bytes in all, and at most ``max_expansion_ratio`` bytes per byte of archive
beyond ``ratio_grace`` (:class:`~pipeline.download.manifest.ExtractLimits`, set in the manifest).
The sizes an archive declares (a zip's directory, a plain tar's headers) are checked before
anything is written, and the bytes really written are counted as they go, so an archive that lies
about its sizes is stopped at the cap too. Before writing, the free space is checked against the
declared size (for a compressed tar, whose sizes are only known by decompressing it, against the
archive's own size, a lower bound), and a disk that fills up during extraction is reported as a
full disk (:class:`DiskFullError`), never as a damaged archive. A damaged archive (not a tar or
zip, truncated, bad compressed data, CRC mismatch) is one line (:class:`ArchiveError`), whatever
the decompressor raised.

Archives unpack into a temporary sibling of the destination that is renamed onto it only when
complete: a refused or interrupted extraction leaves no folder that looks finished. The format is
told from the content, not the name (ImageNetV2's ``.tar.gz`` is an uncompressed tar). The
messages say what is wrong with the archive; the caller (:mod:`.datasets`) adds what happened to
the download and what to do.
"""
from __future__ import annotations

import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pipeline.download.disk import DiskFullError, human_size
from pipeline.download.errors import DownloadError, UnsafeArchiveError
from pipeline.download.manifest import ExtractLimits

_DRIVE = re.compile(r"[A-Za-z]:[/\\]")
_COPY_CHUNK = 1 << 20
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")   # gzip, bzip2, xz: a tar inside
# What the decompressors and readers raise on damaged data (gzip.BadGzipFile is an OSError, told apart
# from a write error by the errno a write error carries).
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError)


class ArchiveError(DownloadError):
    """An archive cannot be unpacked: not a readable tar or zip, or damaged (CRC, truncated, bad compressed data)."""


class ArchiveLimitError(ArchiveError):
    """An archive unpacks to more than its cap (total size, or expansion ratio).

    ``setting`` says which limit to raise where, should the archive really be that large.
    """

    def __init__(self, message: str, setting: str = ""):
        super().__init__(message)
        self.setting = setting


def safe_extract(archive: Path, dest: Path, *, label: str, limits: ExtractLimits | None = None) -> None:
    """Unpack ``archive`` into the new folder ``dest`` (which must not exist), all or nothing."""
    limits = limits or ExtractLimits()
    if dest.exists():
        raise DownloadError(f"{label}: cannot extract {archive.name}: {dest} already exists; delete {dest} and re-run")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as f:
        head = f.read(6)
    budget = _Budget(label, archive, limits)
    declared = _declared_size(archive, head, label)
    budget.check(declared, declared=True)
    DiskFullError.check(label, dest.parent, declared if declared is not None else archive.stat().st_size,
                        f"unpack {archive.name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        try:
            if head[:2] == b"PK":
                _unzip(archive, tmp, label, budget)
            else:
                _untar(archive, tmp, label, budget)
        except OSError as e:
            error = DiskFullError.from_os_error(label, dest.parent, e, f"unpacking {archive.name}")
            if error is not None:
                raise error from None
            if e.errno is None:   # gzip.BadGzipFile and the like: the data, not the disk
                raise _damaged(label, archive, e) from None
            raise DownloadError(f"{label}: cannot unpack {archive.name} into {dest.parent} ({type(e).__name__}: "
                                f"{e}); make it writable and re-run") from None
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Budget:
    """Counts what an archive unpacks to and stops it at its cap."""

    def __init__(self, label: str, archive: Path, limits: ExtractLimits):
        self.label, self.archive, self.limits, self.total = label, archive, limits, 0
        self.size = archive.stat().st_size
        self.cap, self.key = limits.cap(self.size)

    def add(self, n: int) -> None:
        self.total += n
        self.check(self.total)

    def check(self, total: int | None, declared: bool = False) -> None:
        if total is None or total <= self.cap:
            return
        if self.key == "max_expansion_ratio":
            why = (f"more than {self.limits.max_expansion_ratio:g} times its {human_size(self.size)} "
                   f"(max_expansion_ratio; ratio_grace {human_size(self.limits.ratio_grace)})")
        else:
            why = f"more than max_extracted_size {human_size(self.limits.max_extracted_size)}"
        says = "declares that it unpacks to" if declared else "unpacks to at least"
        raise ArchiveLimitError(
            f"{self.label}: refusing to extract {self.archive.name}: it {says} {human_size(total)}, {why}",
            setting=f"{self.key} under limits: in {self.limits.manifest} (or in this file's extract:)")


def _declared_size(archive: Path, head: bytes, label: str) -> int | None:
    """Bytes the archive says it unpacks to: a zip's directory, a plain tar's headers; None for a compressed tar."""
    if head.startswith(_COMPRESSED):
        return None
    try:
        if head[:2] == b"PK":
            with zipfile.ZipFile(archive) as zf:
                return sum(i.file_size for i in zf.infolist())
        with tarfile.open(archive, "r:") as tar:   # seeks from header to header: no pass over the data
            return sum(m.size for m in tar if m.isfile())
    except _DAMAGED as e:
        raise _damaged(label, archive, e) from None


def _damaged(label: str, archive: Path, error: BaseException) -> ArchiveError:
    with open(archive, "rb") as f:
        kind = "zip" if f.read(2) == b"PK" else "tar"
    return ArchiveError(f"{label}: {archive.name} is damaged or not a {kind} archive ({type(error).__name__}: "
                        f"{error})")


def _refuse(label: str, archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refusing to extract {archive.name}: member {member!r} {why}")


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


def _untar(archive: Path, into: Path, label: str, budget: _Budget) -> None:
    def checked(members):
        for member in members:
            _check_name(label, archive, member.name)
            if member.issym() or member.islnk():
                _check_link(label, archive, member.name, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise _refuse(label, archive, member.name, "is a device or FIFO")
            if member.isfile():
                budget.add(member.size)   # tarfile writes exactly this many bytes: stop before, not after
            yield member

    try:
        with tarfile.open(archive, "r:*") as tar:
            # Streaming over the members (not getmembers() first) reads a compressed archive once.
            tar.extractall(into, members=checked(tar), filter="data")
    except tarfile.FilterError as e:   # what the data filter sees on disk that the names did not show
        raise _refuse(label, archive, e.tarinfo.name, str(e)) from None
    except _DAMAGED as e:   # includes zlib.error from a damaged .tar.gz, EOFError from a truncated one
        raise _damaged(label, archive, e) from None


def _unzip(archive: Path, into: Path, label: str, budget: _Budget) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except _DAMAGED as e:
        raise _damaged(label, archive, e) from None
    links: list[tuple[PurePosixPath, str]] = []
    with zf:
        for info in zf.infolist():
            path = _check_name(label, archive, info.filename)
            if not path.parts:
                raise _refuse(label, archive, info.filename, "has an empty path")
            try:
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
                with zf.open(info) as src, open(out, "wb") as dst:
                    # the bytes really written count, not the size the directory claims
                    while chunk := src.read(_COPY_CHUNK):
                        budget.add(len(chunk))
                        dst.write(chunk)
            except _DAMAGED as e:   # CRC mismatch, truncated member, bad compressed data
                raise _damaged(label, archive, e) from None
    # Links last, so no file is ever written through one; then check where each really points.
    root = os.path.realpath(into)
    for path, target in links:
        link = into.joinpath(*path.parts)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        real = os.path.realpath(link)
        if real != root and not real.startswith(root + os.sep):
            raise _refuse(label, archive, str(path), f"is a symlink resolving outside the archive ({target!r})")
