"""HTTP transfer of one manifest file: mirrors in order, bounded retries, resume with Range requests.

Bytes stream into ``<staging>/<name>.part`` (never where a finished file goes), with a sidecar
``<name>.part.json`` naming the URL it came from and the validator that URL gave for those bytes
(its ``ETag``, else its ``Last-Modified``). A later attempt, in this process or after the process
was killed, asks for the rest with ``Range: bytes=<size>-`` plus ``If-Range: <validator>``, and
appends only on a ``206`` whose ``Content-Range`` starts at that size and whose own validator is
still the one recorded. A server whose file changed answers ``200`` with the whole new file (as
does one that ignores Range): the download restarts from zero, so bytes of two versions never mix.
Without a validator from that URL a resume cannot tell whether the file changed; the bytes are
then kept only for a file with a published checksum (which would catch a splice), and a file
without one is downloaded again from zero. Mirrors are tried in order: ``4xx`` (gone, forbidden),
``5xx``, an HTML page where the file should be (an error or login page served with ``200``),
refused, reset or closed connections and timeouts move on to the next one; a transfer that broke
off after receiving bytes resumes from the same mirror first (up to ``resumes`` times in a row).
After ``rounds`` passes over the mirror list the file fails with one line listing each URL's last
error.

Writing is not the network: a full disk (or quota, or file-size limit) stops at once with
:class:`~pipeline.download.disk.DiskFullError`, the partial file kept for the re-run, and so
does a file whose size (from the manifest, else from the server's ``Content-Length``) exceeds
the free space before any byte is written.

Hashes are computed while streaming (primed from the partial file on resume), so verification
(:mod:`pipeline.download.verify`) costs no extra pass. The caller renames the file into place
only after verifying it. Progress: a tqdm bar (bytes, rate, ETA) on a terminal, and a log line
every ``log_every`` seconds so that a job's log file shows progress too.
"""
from __future__ import annotations

import errno
import http.client
import json
import logging
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.download.disk import DiskFullError
from pipeline.download.errors import DownloadError, MirrorsFailedError, NoNetworkError
from pipeline.download.manifest import Expected, FileSpec, Mirror
from pipeline.download.verify import Digest, Hasher

USER_AGENT = "robust-ft-pipeline-download/1 (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_GONE = {401, 403, 404, 410}   # will not change on a retry: skip this mirror in later rounds
_HTML_START = (b"<!doctype html", b"<html")


@dataclass(frozen=True)
class TransferOptions:
    """How hard to try. Defaults suit real hosts; tests shrink the timeout and backoff."""

    timeout: float = 60.0        # seconds to connect and between received bytes
    rounds: int = 3              # passes over the mirror list
    resumes: int = 20            # resumes in a row from one mirror, each after a transfer that made progress
    backoff: float = 5.0         # seconds before the second pass, doubled for each further pass
    chunk_size: int = 1 << 20
    log_every: float = 30.0      # seconds between progress lines in the log
    progress_bar: bool | None = None   # None: tqdm shows a bar only when stderr is a terminal


@dataclass(frozen=True)
class Fetched:
    """A complete, not yet verified download: still at its ``.part`` path."""

    path: Path
    mirror: Mirror
    digest: Digest
    resumed: bool = False   # some bytes came from an earlier response (a resume, or a finished .part)


class _Failure(Exception):
    def __init__(self, reason: str, *, offline: bool = False, progressed: bool = False, gone: bool = False):
        super().__init__(reason)
        self.reason, self.offline, self.progressed, self.gone = reason, offline, progressed, gone


def fetch(file: FileSpec, partial: Path, *, label: str, options: TransferOptions | None = None,
          log: logging.Logger | None = None) -> Fetched:
    """Download ``file`` into ``partial`` (resuming what is there); raise if every mirror fails.

    Raises :class:`NoNetworkError` when every attempt failed to connect, else
    :class:`MirrorsFailedError`; both name each URL's last error. Raises :class:`DiskFullError`
    (at once, no other mirror tried) when the file cannot be written where ``partial`` lies.
    """
    opts, log = options or TransferOptions(), log or logging.getLogger("pipeline.download")
    partial.parent.mkdir(parents=True, exist_ok=True)
    sizes = [file.expected(m).size for m in file.mirrors]
    if all(sizes):   # known before any request: refuse what cannot fit
        have = partial.stat().st_size if partial.is_file() else 0
        DiskFullError.check(label, partial.parent, min(sizes) - have, f"download {file.name}", _KEPT if have else "")
    hasher, failures, gone, offline = Hasher(), {}, set(), True
    for round_ in range(opts.rounds):
        live = [m for m in file.mirrors if m.url not in gone]
        if not live:
            break
        if round_:
            time.sleep(opts.backoff * 2 ** (round_ - 1))
        for mirror in live:
            for _ in range(1 + opts.resumes):   # a transfer that broke off resumes from this mirror at once
                try:
                    resumed = _attempt(file, mirror, partial, hasher, opts, label, log)
                    return Fetched(partial, mirror, hasher.digest(), resumed)
                except _Failure as f:
                    failures[mirror.url], offline = f.reason, offline and f.offline
                    log.warning("%s: %s from %s: %s", label, file.name, mirror.url, f.reason)
                    if f.gone:
                        gone.add(mirror.url)
                    if not f.progressed:
                        break
    tried = "; ".join(f"{url}: {reason}" for url, reason in failures.items())
    if offline:
        raise NoNetworkError(f"{label}: cannot download {file.name}, no network: no mirror answered ({tried}).")
    raise MirrorsFailedError(f"{label}: cannot download {file.name}: every mirror failed ({tried}).")


_KEPT = "; the partial download is kept and resumes"


def _attempt(file: FileSpec, mirror: Mirror, partial: Path, hasher: Hasher, opts: TransferOptions,
             label: str, log: logging.Logger) -> bool:
    """One request; returns with ``partial`` complete and ``hasher`` covering it, or raises _Failure.

    Returns whether the file holds bytes of an earlier response (resumed).
    """
    expected = file.expected(mirror)
    meta = _sidecar(partial)
    start = _resumable_size(partial, mirror, expected, meta)
    if expected.size is not None and start == expected.size:
        hasher.prime(partial)   # finished before an interruption; verification decides
        return True
    validator = _validator(meta) if meta.get("url") == mirror.url else None
    if start and validator is None and not expected.published:
        log.info("%s: %s gave no ETag or Last-Modified for %s, so a resume cannot tell whether the file changed; "
                 "downloading it again from byte 0", label, mirror.url, file.name)
        _truncate(partial)
        start = 0
    if start and hasher.size != start:   # resumed after a restart of the process: hash what is on disk
        hasher.prime(partial)
    elif not start:
        hasher.reset()
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator   # a changed file comes back whole (200), never spliced
    try:
        response = urllib.request.build_opener().open(urllib.request.Request(mirror.url, headers=headers),
                                                       timeout=opts.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and start:   # nothing left past our size: complete, or a file that changed
            total = _parse_total(e.headers.get("Content-Range", ""))
            if total == start:
                return True
            _truncate(partial)
            raise _Failure("HTTP 416 for our resume offset; starting over") from None
        raise _Failure(f"HTTP {e.code}", gone=e.code in _GONE) from None
    except (OSError, http.client.HTTPException) as e:   # URLError, refused, reset, timeout, DNS, TLS
        raise _Failure(_reason(e), offline=_unreachable(e)) from None
    with response:
        total = _check_response(response, start, expected, partial, meta if validator else {}, file.name, label, log)
        if response.status == 200:   # the whole file, whatever we asked for
            start = 0
            hasher.reset()
            meta = {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified")}
        if total is not None:   # Content-Length, where the manifest has no size: refuse what cannot fit
            DiskFullError.check(label, partial.parent, total - start, f"download {file.name}", _KEPT if start else "")
        partial.with_name(partial.name + ".json").write_text(json.dumps(
            {"url": mirror.url, "variant": _variant(mirror), "total": total, "etag": meta.get("etag"),
             "last_modified": meta.get("last_modified")}))
        progress = _Progress(label, file.name, log, opts, start, total or expected.size or file.approx_size)
        html = response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html"
        try:
            with open(partial, "ab" if start else "wb") as out:
                first = not start and not file.name.lower().endswith((".htm", ".html"))
                while True:
                    try:
                        chunk = response.read(opts.chunk_size)
                    except (OSError, http.client.HTTPException) as e:   # reset, timeout, IncompleteRead mid-body
                        raise _Failure(f"transfer broke off at {hasher.size} bytes ({_reason(e)})",
                                       progressed=hasher.size > start) from None
                    if not chunk:
                        break
                    if first and _looks_html(chunk, html):
                        raise _Failure("served an HTML page with status 200, not the file (an error or login page)")
                    first = False
                    out.write(chunk)
                    hasher.update(chunk)
                    progress.update(len(chunk))
        except OSError as e:   # writing the file, not reading the network: another mirror would not help
            error = DiskFullError.from_os_error(label, partial.parent, e, f"writing {partial}", _KEPT)
            if error is None:
                raise DownloadError(f"{label}: cannot write {partial} ({type(e).__name__}: {e}); make "
                                    f"{partial.parent} writable and re-run") from None
            raise error from None
        finally:
            progress.close()
    if total is not None and hasher.size != total:
        raise _Failure(f"connection closed at {hasher.size} of {total} bytes", progressed=hasher.size > start)
    return start > 0


def _check_response(response, start: int, expected: Expected, partial: Path, meta: dict, name: str, label: str,
                    log: logging.Logger) -> int | None:
    """The file's total size as the server states it (None: unknown); raises _Failure on a bad answer.

    ``meta``: the validators recorded for the bytes being resumed (empty: none to compare).
    """
    status = response.status
    if status == 206 and start:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != start:
            _truncate(partial)
            raise _Failure(f"206 with Content-Range {response.headers.get('Content-Range')!r} "
                           f"for bytes={start}-; starting over")
        changed = _changed(meta, response.headers)
        if changed:   # a server that ignored If-Range: its rest belongs to another version of the file
            _truncate(partial)
            raise _Failure(f"the file changed on the server since byte 0 was received ({changed}); starting over",
                           progressed=True)
        total = None if match.group(3) == "*" else int(match.group(3))
        log.info("%s: resuming %s at byte %d", label, partial.name, start)
    elif status == 200:
        if start:
            log.info("%s: %s sent the whole of %s (the file changed since the download started, or the server "
                     "ignores Range requests); downloading it again from byte 0", label, response.geturl(), name)
            _truncate(partial)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    else:
        raise _Failure(f"unexpected HTTP {status}")
    if expected.size is not None and total is not None and total != expected.size:
        raise _Failure(f"serves {total} bytes, expected {expected.size}")
    return total


def _looks_html(head: bytes, html_type: bool) -> bool:
    """An HTML document where a data file should start (a binary file labelled text/html is not refused)."""
    head = head.lstrip()[:16].lower()
    return head.startswith(_HTML_START) or (html_type and head.startswith(b"<"))


def _sidecar(partial: Path) -> dict:
    try:
        meta = json.loads(partial.with_name(partial.name + ".json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _validator(meta: dict) -> str | None:
    """What If-Range may carry: a strong ETag (a weak one is not allowed there), else the Last-Modified date."""
    etag = meta.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return meta.get("last_modified") or None


def _changed(meta: dict, headers) -> str | None:
    """How the response's validator differs from the recorded one (None: the same file, or nothing to compare)."""
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        old, new = meta.get(key), headers.get(header)
        if old and new:
            return f"{header} {old} became {new}" if old != new else None
    return None


def _resumable_size(partial: Path, mirror: Mirror, expected: Expected, meta: dict) -> int:
    """Bytes of ``partial`` to keep: 0 unless they came from a host serving the same bytes as ``mirror``."""
    if not partial.exists():
        return 0
    size = partial.stat().st_size
    if size and (meta.get("variant") != _variant(mirror) or (expected.size is not None and size > expected.size)):
        _truncate(partial)
        return 0
    return size


def _variant(mirror: Mirror) -> str:
    """Which bytes a mirror serves: its own checksum where it has one, else the file's (shared by mirrors)."""
    return mirror.sha256 or mirror.md5 or (str(mirror.size) if mirror.size else "file")


def _truncate(partial: Path) -> None:
    partial.write_bytes(b"")


def _parse_total(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes\s+\*/(\d+)", content_range.strip())
    return int(match.group(1)) if match else None


def _unreachable(error: BaseException) -> bool:
    """True for the ways "no network" shows: refused, unresolvable, unreachable, timed out."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, (ConnectionRefusedError, socket.gaierror, TimeoutError, socket.timeout)):
        return True
    return isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)


def _reason(error: BaseException) -> str:
    """A short cause: 'connection refused', 'timed out', 'connection closed', ..."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(error, http.client.IncompleteRead):
        return "connection closed mid-body"
    if isinstance(error, socket.gaierror):
        return "host name not resolved"
    return f"{type(error).__name__}: {error}"


class _Progress:
    """tqdm bar (bytes, rate, ETA) plus a log line every ``log_every`` seconds for non-terminal logs."""

    def __init__(self, label: str, name: str, log: logging.Logger, opts: TransferOptions, initial: int,
                 total: int | None):
        from tqdm.auto import tqdm

        self.label, self.name, self.log, self.every, self.total = label, name, log, opts.log_every, total
        self.done = self.initial = initial
        self.t0 = self.last = time.monotonic()
        disable = None if opts.progress_bar is None else not opts.progress_bar
        self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                        disable=disable, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log.info("%s: %s", self.label, self.line(now))

    def line(self, now: float) -> str:
        from tqdm import tqdm

        rate = (self.done - self.initial) / max(now - self.t0, 1e-6)
        size = tqdm.format_sizeof
        text = f"{self.name} {size(self.done, 'B', 1024)}"
        if self.total:
            eta = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
            text += f" of {size(self.total, 'B', 1024)} ({100 * self.done / self.total:.0f}%)"
            return f"{text}, {size(rate, 'B/s', 1024)}, ETA {eta}"
        return f"{text}, {size(rate, 'B/s', 1024)}"

    def close(self) -> None:
        self.bar.close()
        self.log.info("%s: %s", self.label, self.line(time.monotonic()))
