"""A small JSON-over-HTTP client with timeouts, safe retries and errors that say where."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

from ..errors import MlopsError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ClusterCallError(MlopsError):
    """A call to a cluster service failed; the message names the environment and the endpoint."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Retry:
    attempts: int = 4  # total tries of a retryable call
    backoff: float = 0.5  # seconds before the 2nd try; doubles each time
    max_backoff: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delays(self) -> Iterable[float]:
        delay = self.backoff
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_backoff)
            delay *= 2


@dataclass
class JsonApi:
    """One service endpoint of one environment, e.g. GitHub's REST API for `staging`."""

    service: str  # "GitHub", "Argo CD", ...
    env: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    retry: Retry = field(default_factory=Retry)
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def request(self, method: str, path: str, *, ok: Iterable[int] = (), **kwargs: Any) -> requests.Response:
        """Send one request; retry when it is safe; raise ClusterCallError unless 2xx or in `ok`."""
        method = method.upper()
        url = self.url(path)
        where = f"{self.service} ({self.env}) {method} {url}"
        retryable = method in IDEMPOTENT
        delays = iter(self.retry.delays())
        while True:
            try:
                response = self.session.request(
                    method, url, headers=self.headers, timeout=self.timeout, allow_redirects=True, **kwargs
                )
            except requests.Timeout as exc:
                # A POST that timed out may have been applied: only idempotent calls are resent.
                if retryable and (delay := next(delays, None)) is not None:
                    self.retry.sleep(delay)
                    continue
                raise ClusterCallError(f"{where} timed out after {self.timeout:g}s") from exc
            except requests.ConnectionError as exc:
                # A refused connection never reached the server: resending is safe for any method.
                refused = _never_sent(exc)
                if (retryable or refused) and (delay := next(delays, None)) is not None:
                    self.retry.sleep(delay)
                    continue
                raise ClusterCallError(f"{where} failed: cannot connect ({_reason(exc)})") from exc
            if response.status_code in RETRY_STATUSES and retryable:
                delay = next(delays, None)
                if delay is not None:
                    self.retry.sleep(_retry_after(response, delay))
                    continue
            if 200 <= response.status_code < 300 or response.status_code in set(ok):
                return response
            raise ClusterCallError(
                f"{where} answered {response.status_code}: {_message(response)}",
                status=response.status_code,
                body=_json_or_text(response),
            )

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _never_sent(exc: requests.ConnectionError) -> bool:
    text = repr(exc)
    return any(marker in text for marker in ("NewConnectionError", "Connection refused", "NameResolutionError"))


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Temporary failure"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _retry_after(response: requests.Response, default: float) -> float:
    value = response.headers.get("Retry-After", "")
    return min(float(value), 60.0) if value.isdigit() else default


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _message(response: requests.Response) -> str:
    body = _json_or_text(response)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or ""
        errors = body.get("errors")
        if errors:
            message = f"{message} {errors}".strip()
        if message:
            return str(message)[:500]
    text = str(body).strip()
    return text[:500] if text else response.reason or "no message"
