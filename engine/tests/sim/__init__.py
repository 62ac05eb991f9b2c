"""The cluster simulation: stand-ins on 127.0.0.1 for the services the cluster backend calls.

Each emulator is a real server started and stopped by a test (a context manager or fixture):
github_api (GitHub's REST API over a real bare git repository), argocd (Argo CD's API plus a
KServe that downloads the storage URI and serves it with MLServer), kfp_api and storage.
This module holds what they share: a threaded HTTP server that records every request, and
a server that accepts connections and never answers (for the bounded-wait tests).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

HOST = "127.0.0.1"


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


Reply = tuple[int, dict[str, str], bytes | str | dict | list | None]


@dataclass
class LocalServer:
    """A real HTTP/1.1 server on a free 127.0.0.1 port; `route(request) -> (status, headers, body)`."""

    route: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> LocalServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def setup(self):
                super().setup()
                # headers and body are separate writes: without this, Nagle + delayed ACK add 40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    unquote(parts.path),
                    parse_qs(parts.query, keep_blank_values=True),
                    dict(self.headers),
                    self.rfile.read(length),
                )
                server_self.requests.append(request)
                try:
                    status, headers, body = server_self.route(request)
                except Exception as exc:  # an emulator bug must show as a 500, not a hung client
                    status, headers, body = 500, {}, {"message": f"emulator error: {type(exc).__name__}: {exc}"}
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                    headers = {"Content-Type": "application/json; charset=utf-8", **headers}
                payload = body.encode() if isinstance(body, str) else (body or b"")
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout tests)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}"


class SilentServer:
    """Accepts every connection and never answers: the server a bounded wait must give up on."""

    def __enter__(self) -> SilentServer:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.url = f"http://{HOST}:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)  # kept open, never read from or written to
            self.accepted += 1

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
