"""The HTTP client every cluster call goes through: timeouts, safe retries, errors that say
where. Also home of `LocalServer`, the 127.0.0.1 server the other cluster tests answer from."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from mlrail.cluster.http import ClusterCallError, JsonApi, Retry


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


Reply = tuple[int, dict[str, str], bytes | str | dict | list | None]


@dataclass
class LocalServer:
    """A real HTTP server on a free 127.0.0.1 port; `route(request) -> (status, headers, body)`."""

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
                    self.command, parts.path, parse_qs(parts.query), dict(self.headers), self.rfile.read(length)
                )
                server_self.requests.append(request)
                status, headers, body = server_self.route(request)
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                    headers = {"Content-Type": "application/json", **headers}
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

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NO_WAIT = Retry(attempts=3, backoff=0.0, sleep=lambda _: None)


def test_get_is_retried_on_5xx_and_succeeds():
    answers = iter([(502, {}, "bad gateway"), (503, {}, "busy"), (200, {}, {"ok": True})])
    with LocalServer(lambda request: next(answers)) as server:
        api = JsonApi("GitHub", "staging", server.url, retry=NO_WAIT)
        assert api.json("GET", "/thing") == {"ok": True}
        assert len(server.requests) == 3


def test_post_is_not_resent_after_a_5xx():
    with LocalServer(lambda request: (500, {}, {"message": "boom"})) as server:
        api = JsonApi("GitHub", "production", server.url, retry=NO_WAIT)
        with pytest.raises(ClusterCallError) as caught:
            api.json("POST", "/things", json={"a": 1})
        assert len(server.requests) == 1
        message = str(caught.value)
        assert "GitHub (production) POST" in message and f"{server.url}/things" in message
        assert "500" in message and "boom" in message


def test_retries_stop_after_the_last_attempt():
    with LocalServer(lambda request: (503, {}, "down")) as server:
        api = JsonApi("Argo CD", "staging", server.url, retry=NO_WAIT)
        with pytest.raises(ClusterCallError, match=r"Argo CD \(staging\) GET .* answered 503"):
            api.json("GET", "/x")
        assert len(server.requests) == NO_WAIT.attempts


def test_backoff_doubles_between_attempts():
    slept = []
    retry = Retry(attempts=4, backoff=0.5, sleep=slept.append)
    with LocalServer(lambda request: (503, {}, "down")) as server, pytest.raises(ClusterCallError):
        JsonApi("GitHub", "sandbox", server.url, retry=retry).json("GET", "/x")
    assert slept == [0.5, 1.0, 2.0]


def test_a_slow_server_times_out_with_the_environment_and_endpoint_named():
    def slow(request):
        time.sleep(1.0)
        return 200, {}, {}

    with LocalServer(slow) as server:
        api = JsonApi("GitHub", "staging", server.url, timeout=0.2, retry=Retry(attempts=1))
        with pytest.raises(ClusterCallError, match=r"GitHub \(staging\) GET http://127\.0\.0\.1:\d+/slow timed out"):
            api.json("GET", "/slow")


def test_connection_refused_names_environment_and_endpoint():
    url = f"http://127.0.0.1:{closed_port()}"
    api = JsonApi("Kubeflow Pipelines", "production", url, retry=NO_WAIT)
    with pytest.raises(ClusterCallError) as caught:
        api.json("POST", "/apis/v2beta1/runs", json={})
    assert f"Kubeflow Pipelines (production) POST {url}/apis/v2beta1/runs failed: cannot connect" in str(caught.value)
