"""The errors a download can end with; each carries one line saying what failed and what to do.

A caller (the ``download`` stage, ``python -m pipeline fetch``) prints ``str(error)`` and exits
with :attr:`DownloadError.exit_code`; no traceback is needed to act on any of them.
"""
from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks folded into single spaces."""
    return " ".join(str(text).split())


class DownloadError(RuntimeError):
    """Base class: a dataset or checkpoint could not be put in place. The message is one line."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(one_line(message))


class ManifestError(DownloadError):
    """``manifest.yaml`` (or a manifest given by the caller) is malformed; names the entry and key."""


class ManualDataError(DownloadError):
    """The data is not in place and will not be downloaded (licensed, or ``download: false``).

    The message names the dataset, what to place where (with the expected layout) and where to get it.
    """


class MirrorsFailedError(DownloadError):
    """Every URL of a file failed (HTTP errors, wrong size, retries spent); says where to place it by hand."""


class NoNetworkError(MirrorsFailedError):
    """Every URL of a file failed to connect (refused, unresolvable, unreachable, timed out): no network."""


class ChecksumError(DownloadError):
    """A finished download does not match its published checksum, size or the lock file; it was deleted."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target (``..``, absolute path, link pointing outside)."""
