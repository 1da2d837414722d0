"""HTTP transfer of one manifest file: mirrors in order, bounded retries, resume with Range requests.

Bytes stream into ``<staging>/<name>.part`` (never where a finished file goes), with a sidecar
``<name>.part.json`` naming the URL it came from. A later attempt, in this process or after the
process was killed, asks for the rest with ``Range: bytes=<size>-`` and appends only on a ``206``
whose ``Content-Range`` starts at that size; a server that ignores Range (``200``) is read from
zero into a truncated file. Mirrors are tried in order: ``4xx`` (gone, forbidden), ``5xx``,
refused, reset or closed connections and timeouts move on to the next one; a transfer that broke
off after receiving bytes resumes from the same mirror first (up to ``resumes`` times in a row).
After ``rounds`` passes over the mirror list the file fails with one line listing each URL's last
error.

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

from pipeline.download.errors import MirrorsFailedError, NoNetworkError
from pipeline.download.manifest import Expected, FileSpec, Mirror
from pipeline.download.verify import Digest, Hasher

USER_AGENT = "robust-ft-pipeline-download/1 (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_GONE = {401, 403, 404, 410}   # will not change on a retry: skip this mirror in later rounds


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


class _Failure(Exception):
    def __init__(self, reason: str, *, offline: bool = False, progressed: bool = False, gone: bool = False):
        super().__init__(reason)
        self.reason, self.offline, self.progressed, self.gone = reason, offline, progressed, gone


def fetch(file: FileSpec, partial: Path, *, label: str, options: TransferOptions | None = None,
          log: logging.Logger | None = None) -> Fetched:
    """Download ``file`` into ``partial`` (resuming what is there); raise if every mirror fails.

    Raises :class:`NoNetworkError` when every attempt failed to connect, else
    :class:`MirrorsFailedError`; both name each URL's last error.
    """
    opts, log = options or TransferOptions(), log or logging.getLogger("pipeline.download")
    partial.parent.mkdir(parents=True, exist_ok=True)
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
                    _attempt(file, mirror, partial, hasher, opts, label, log)
                    return Fetched(partial, mirror, hasher.digest())
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


def _attempt(file: FileSpec, mirror: Mirror, partial: Path, hasher: Hasher, opts: TransferOptions,
             label: str, log: logging.Logger) -> None:
    """One request; returns with ``partial`` complete and ``hasher`` covering it, or raises _Failure."""
    expected = file.expected(mirror)
    start = _resumable_size(partial, mirror, expected)
    if expected.size is not None and start == expected.size:
        hasher.prime(partial)   # finished before an interruption; verification decides
        return
    if start and hasher.size != start:   # resumed after a restart of the process: hash what is on disk
        hasher.prime(partial)
    elif not start:
        hasher.reset()
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.build_opener().open(urllib.request.Request(mirror.url, headers=headers),
                                                       timeout=opts.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and start:   # nothing left past our size: complete, or a file that changed
            total = _parse_total(e.headers.get("Content-Range", ""))
            if total == start:
                return
            _truncate(partial)
            raise _Failure("HTTP 416 for our resume offset; starting over") from None
        raise _Failure(f"HTTP {e.code}", gone=e.code in _GONE) from None
    except (OSError, http.client.HTTPException) as e:   # URLError, refused, reset, timeout, DNS, TLS
        raise _Failure(_reason(e), offline=_unreachable(e)) from None
    with response:
        total = _check_response(response, start, expected, partial, label, log)
        if response.status == 200:   # the whole file, whatever we asked for
            start = 0
            hasher.reset()
        partial.with_name(partial.name + ".json").write_text(json.dumps(
            {"url": mirror.url, "variant": _variant(mirror), "total": total}))
        progress = _Progress(label, file.name, log, opts, start, total or expected.size or file.approx_size)
        try:
            with open(partial, "ab" if start else "wb") as out:
                while chunk := response.read(opts.chunk_size):
                    out.write(chunk)
                    hasher.update(chunk)
                    progress.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:   # reset, timeout, IncompleteRead mid-body
            raise _Failure(f"transfer broke off at {hasher.size} bytes ({_reason(e)})",
                           progressed=hasher.size > start) from None
        finally:
            progress.close()
    if total is not None and hasher.size != total:
        raise _Failure(f"connection closed at {hasher.size} of {total} bytes", progressed=hasher.size > start)


def _check_response(response, start: int, expected: Expected, partial: Path, label: str,
                    log: logging.Logger) -> int | None:
    """The file's total size as the server states it (None: unknown); raises _Failure on a bad answer."""
    status = response.status
    if status == 206 and start:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != start:
            _truncate(partial)
            raise _Failure(f"206 with Content-Range {response.headers.get('Content-Range')!r} "
                           f"for bytes={start}-; starting over")
        total = None if match.group(3) == "*" else int(match.group(3))
        log.info("%s: resuming %s at byte %d", label, partial.name, start)
    elif status == 200:
        if start:
            log.info("%s: %s ignores Range requests; downloading %s again from byte 0",
                     label, response.geturl(), partial.name)
            _truncate(partial)
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    else:
        raise _Failure(f"unexpected HTTP {status}")
    if expected.size is not None and total is not None and total != expected.size:
        raise _Failure(f"serves {total} bytes, expected {expected.size}")
    return total


def _resumable_size(partial: Path, mirror: Mirror, expected: Expected) -> int:
    """Bytes of ``partial`` to keep: 0 unless they came from a host serving the same bytes as ``mirror``."""
    if not partial.exists():
        return 0
    size = partial.stat().st_size
    try:
        meta = json.loads(partial.with_name(partial.name + ".json").read_text())
    except (OSError, ValueError):
        meta = {}
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
