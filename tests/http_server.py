"""A real HTTP server on 127.0.0.1 for the download tests: Range requests, counters, failures on demand.

Each path serves a :class:`Route`: its bytes, optionally slowly, and optionally failing the
first ``fail_times`` requests (or all) with an HTTP status, a closed connection or a stall. The
server records every request (method, path, Range and If-Range headers) and counts the body bytes
it wrote, so a test can assert "no connection at all", "a Range request was made" or "fewer than
1.5x the file's bytes went over the wire".

A route may send validators, as real hosts do: an ``ETag`` (derived from its current bytes) and a
``Last-Modified`` date (one second later each time its bytes change), and honours ``If-Range``
(RFC 9110: a validator that no longer matches gets the whole current file with ``200``). Its bytes
may change while a client downloads: assign ``route.body``, or give ``then`` and ``change_after``
(requests served before the route switches to ``then``), which covers a change between the first
response and a resume within one download.
"""
from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_EPOCH = 1_700_000_000   # Last-Modified of a route's first bytes


@dataclass
class Route:
    body: bytes
    status: int | None = None          # answer this status (404, 503, ...) instead of the body
    close: bool = False                # close the connection without answering
    stall: float = 0.0                 # sleep this long before answering (client timeouts)
    fail_times: int | None = None      # None: every request fails as above; n: only the first n
    ignore_range: bool = False         # answer 200 with the whole body even to a Range request
    truncate_at: int | None = None     # first request: send the headers, then only this many bytes, then close
    delay: float = 0.0                 # seconds between chunks (a slow server)
    chunk: int = 64 * 1024
    headers: dict[str, str] = field(default_factory=dict)
    etag: bool = False                 # send ETag: a strong tag derived from the current bytes
    last_modified: bool = False        # send Last-Modified: a date that moves on each time the bytes change
    honour_if_range: bool = True       # False: answer a Range request with 206 whatever If-Range says
    then: bytes | None = None          # the bytes served once change_after requests have been answered
    change_after: int | None = None
    hits: int = 0
    version: int = 0                   # times the bytes changed

    def __setattr__(self, name, value) -> None:
        if name == "body" and "body" in self.__dict__ and value != self.__dict__["body"]:
            self.__dict__["version"] = self.__dict__.get("version", 0) + 1
        super().__setattr__(name, value)

    def validators(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["ETag"] = f'"{hashlib.sha256(self.body).hexdigest()[:24]}"'
        if self.last_modified:
            out["Last-Modified"] = email.utils.formatdate(_EPOCH + self.version, usegmt=True)
        return out


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    if_range: str | None = None


class LoopbackServer:
    """``with LoopbackServer() as srv: url = srv.add("/f.tar", data)``; then inspect ``srv.requests``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> LoopbackServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None   # clients we kill on purpose
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **behaviour) -> str:
        self.routes[path] = Route(body, **behaviour)
        return self.url(path)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent = 0

    def range_requests(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.range and (path is None or r.path == path)]

    def hits(self, path: str) -> int:
        return sum(r.path == path for r in self.requests)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:   # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            server._record(Request(self.command, self.path, self.headers.get("Range"), self.headers.get("If-Range")))
            route = server.routes.get(self.path)
            if route is None:
                self._empty(404)
                return
            if route.change_after is not None and route.hits >= route.change_after and route.then is not None:
                route.body, route.then = route.then, None
            route.hits += 1
            failing = route.fail_times is None or route.hits <= route.fail_times
            if route.stall and failing:
                time.sleep(route.stall)
            if route.close and failing:
                self.close_connection = True   # no status line at all: the client sees the connection close
                return
            if route.status and failing:
                self._empty(route.status, route.headers)
                return
            body, start, code, validators = route.body, 0, 200, route.validators()
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
            if_range = self.headers.get("If-Range")
            if if_range and route.honour_if_range and if_range not in validators.values():
                match = None   # the client's copy is of other bytes: the whole current file
            if match and not route.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                    return
                code = 206
            data = body[start:]
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "none" if route.ignore_range else "bytes")
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            for key, value in {**validators, **route.headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if head:
                return
            limit = route.truncate_at if route.truncate_at is not None and route.hits == 1 else len(data)
            try:
                for i in range(0, limit, route.chunk):
                    piece = data[i:min(i + route.chunk, limit)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    server._count(len(piece))
                    if route.delay:
                        time.sleep(route.delay)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def _empty(self, code: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()

    return Handler
