"""A full disk, told apart from a network failure: free-space checks and the one-line :class:`DiskFullError`.

Used where a download is written (:mod:`.transfer`) and where an archive is unpacked
(:mod:`.extract`). It lives apart from :mod:`.errors` because the ``backbone`` stage imports that
module: a change here does not re-run every backbone.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from pipeline.download.errors import DownloadError

# The ways "the disk is full" shows when writing: no space, a quota, a file-size limit (ulimit -f).
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file size limit exceeded (ulimit -f, or the file system's largest file)"}
_REMEDY = "free space there (or point the dataset's root: at a disk with room) and re-run"


class DiskFullError(DownloadError):
    """No room to write a download or what an archive unpacks to (no space, quota, file-size limit).

    Never a mirror failure: the network is fine and another mirror would not help. What was
    written so far is kept (a download resumes, a verified archive is only unpacked on a re-run).
    """

    @classmethod
    def check(cls, label: str, folder: Path, need: int, doing: str, kept: str = "") -> None:
        """Raise unless ``folder``'s file system has ``need`` bytes free for an unprivileged writer.

        ``doing`` says what needs the room ("download x.tar"), ``kept`` what a re-run starts from.
        """
        free = free_bytes(folder)
        if free is not None and need > free:
            raise cls(f"{label}: not enough free space to {doing}: {human_size(need)} needed, {human_size(free)} "
                      f"free in {folder}; {_REMEDY}{kept}")

    @classmethod
    def from_os_error(cls, label: str, folder: Path, error: OSError, doing: str,
                      kept: str = "") -> DiskFullError | None:
        """The one-line error for ``error`` when it means "no room to write" (else None)."""
        reason = _NO_ROOM.get(error.errno)
        if reason is None:
            return None
        free = free_bytes(folder)
        where = f"{human_size(free)} free in {folder}" if free is not None else str(folder)
        return cls(f"{label}: {reason} while {doing} ({where}); {_REMEDY}{kept}")


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged process may still write on ``folder``'s file system (None: unknown)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_size(n: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``: sizes in messages."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"
