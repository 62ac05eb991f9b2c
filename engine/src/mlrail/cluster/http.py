"""The one HTTP policy of the cluster backend: a `requests.Session` with urllib3's `Retry`.

- Every request has a connect and a read timeout (`timeouts.connect_s`, `timeouts.read_s`).
- A logical call, retries and backoff included, ends by a deadline (`timeouts.deadline_s`): a
  retry that would start after it is not made, and no attempt's timeouts reach past it.
- Retried: connection failures (the request never left, any method); 429 (refused unprocessed,
  any method); 502/503/504 and read timeouts for idempotent methods only (a POST that timed
  out may have been applied). `Retry-After` is honoured while it fits in the deadline.
- Errors are one sentence naming the service, the environment, the method and URL, and the
  setting to raise.

PyGithub and kfp.Client take the same pieces (`retry_policy`, `request_timeout`, `deadline`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)

from ..errors import MlopsError

SETTINGS = "config/environments.yaml"  # where `timeouts:` lives
RETRY_STATUSES = frozenset({429, 502, 503, 504})
ANY_METHOD_STATUSES = frozenset({429})  # the server refused the request without processing it
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ClusterCallError(MlopsError):
    """A call to a cluster service failed; the message names the environment and the endpoint."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Timeouts:
    """Seconds; read from `timeouts:` in config/environments.yaml (the defaults fail within ~30 s)."""

    connect_s: float = 5.0
    read_s: float = 20.0
    deadline_s: float = 30.0

    @classmethod
    def of(cls, source: Any = None) -> Timeouts:
        """The timeouts of an Environment or Config (its `.timeouts`), else the defaults."""
        given = getattr(source, "timeouts", None) if source is not None else None
        if given is None:
            return cls()
        if isinstance(given, dict):
            values = {key: given[key] for key in ("connect_s", "read_s", "deadline_s") if key in given}
        else:
            values = {key: getattr(given, key) for key in ("connect_s", "read_s", "deadline_s") if hasattr(given, key)}
        return cls(**{key: float(value) for key, value in values.items()})


@dataclass(frozen=True)
class Retry:
    """How many times and how patiently a call is retried (within the deadline)."""

    attempts: int = 4  # total tries of a retryable call
    backoff: float = 0.5  # urllib3 backoff_factor: 0, 2×, 4×, ... seconds between tries
    max_backoff: float = 8.0


# --- the deadline of one logical call --------------------------------------------------------


@dataclass(frozen=True)
class _Deadline:
    at: float  # time.monotonic()
    seconds: float
    setting: str


_CURRENT: ContextVar[_Deadline | None] = ContextVar("mlrail_http_deadline", default=None)


@contextmanager
def deadline(seconds: float, setting: str = "timeouts.deadline_s") -> Iterator[None]:
    """Bound every request made inside (retries and waits included) by `seconds` from now.

    Nested deadlines keep the earlier one."""
    outer = _CURRENT.get()
    mine = _Deadline(time.monotonic() + seconds, seconds, setting)
    token = _CURRENT.set(mine if outer is None or outer.at > mine.at else outer)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (None outside `deadline`)."""
    current = _CURRENT.get()
    return None if current is None else current.at - time.monotonic()


class DeadlineExceeded(urllib3.exceptions.HTTPError):
    """The next retry would pass the deadline. Not a MaxRetryError, so urllib3 does not swallow
    it into the last response and requests re-raises it as is."""

    def __init__(self, limit: _Deadline, last: str, wait: float):
        super().__init__(f"gave up after {limit.seconds:g}s ({limit.setting})")
        self.limit, self.last, self.wait = limit, last, wait


class DeadlineTimeout(urllib3.Timeout):
    """urllib3 clones the timeout for every attempt: each clone fits in the current deadline."""

    def clone(self) -> urllib3.Timeout:
        left = remaining()
        connect, read = self._connect, self._read
        if left is None:
            return urllib3.Timeout(connect=connect, read=read, total=self.total)
        left = max(left, 0.01)
        return urllib3.Timeout(
            connect=min(connect, left) if isinstance(connect, (int, float)) else left,
            read=min(read, left) if isinstance(read, (int, float)) else left,
            total=left,
        )


def request_timeout(timeouts: Timeouts) -> DeadlineTimeout:
    """The `timeout=` for requests (and PyGithub): (connect, read), capped by the deadline."""
    return DeadlineTimeout(connect=timeouts.connect_s, read=timeouts.read_s)


class _DeadlineMixin:
    """Stops retrying when the wait before the next try would end past the deadline."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in ANY_METHOD_STATUSES and self.total:  # type: ignore[attr-defined]
            return True
        return super().is_retry(method, status_code, has_retry_after)  # type: ignore[misc]

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # noqa: ANN001
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # type: ignore[misc]
        limit = _CURRENT.get()
        if limit is not None:
            wait = None
            if response is not None and self.respect_retry_after_header:  # type: ignore[attr-defined]
                wait = new.get_retry_after(response)
            wait = new.get_backoff_time() if wait is None else wait
            if time.monotonic() + wait >= limit.at:
                raise DeadlineExceeded(limit, self._last(response, error, wait), wait) from error
        return new

    def _last(self, response, error, wait: float) -> str:  # noqa: ANN001
        if response is None:
            return str(error or "")
        message = _response_message(self.response_content(response))
        text = f"answered {response.status}" + (f": {message}" if message else "")
        return text + (f" (asked to wait {wait:g}s)" if wait > 1 else "")

    def response_content(self, response) -> bytes:  # noqa: ANN001
        """The body of a retryable answer (we stop retrying, so it may be consumed)."""
        already = getattr(self, "_content", None)  # PyGithub's GithubRetry read it to classify a 403
        if already is not None:
            return already
        try:
            return response.data or b""
        except Exception:  # a broken body must not hide the answer's status
            return b""


class DeadlineRetry(_DeadlineMixin, urllib3.Retry):
    """urllib3.Retry that respects the current `deadline`."""


def retry_policy(retry: Retry, base: type[urllib3.Retry] = urllib3.Retry, **extra: Any) -> urllib3.Retry:
    """The urllib3 Retry of our policy; `base` lets a client keep its own (e.g. PyGithub's GithubRetry)."""
    cls = base if issubclass(base, _DeadlineMixin) else type(f"Deadline{base.__name__}", (_DeadlineMixin, base), {})
    retries = max(retry.attempts - 1, 0)
    options: dict[str, Any] = {
        "total": retries,
        "connect": retries,
        "read": retries,
        "status": retries,
        "other": 0,
        "redirect": 5,
        "backoff_factor": retry.backoff,
        "backoff_max": retry.max_backoff,
        "status_forcelist": sorted(RETRY_STATUSES),
        "allowed_methods": IDEMPOTENT,
        "respect_retry_after_header": True,
        "raise_on_status": False,  # the last answer is returned, so its status and body can be reported
    }
    options.update(extra)
    return cls(**options)


def session(retry: Retry | None = None, headers: dict[str, str] | None = None) -> requests.Session:
    """A requests.Session that retries by our policy (timeouts are per request: `request_timeout`)."""
    made = requests.Session()
    adapter = HTTPAdapter(max_retries=retry_policy(retry or Retry()))
    made.mount("http://", adapter)
    made.mount("https://", adapter)
    made.headers.update(headers or {})
    return made


# --- errors -------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its urllib3 reasons and its causes, outermost first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        for attr in ("reason", "last", "__cause__", "__context__"):
            value = getattr(current, attr, None)
            if isinstance(value, BaseException):
                todo.append(value)


def describe_failure(exc: BaseException, timeouts: Timeouts) -> str:
    """Why a request raised, as a phrase naming the setting to raise where one applies."""
    chain = list(_chain(exc))
    over = next((e for e in chain if isinstance(e, DeadlineExceeded)), None)
    cause = _cause(chain, timeouts)
    if over is not None:
        cause = cause or over.last
        last = f"; last: {cause}" if cause else ""
        return f"gave up after {over.limit.seconds:g}s (raise {over.limit.setting} in {SETTINGS}){last}"
    return cause or (str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)


def _cause(chain: list[BaseException], timeouts: Timeouts) -> str:
    for error in chain:
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first
        if isinstance(error, (NewConnectionError, NameResolutionError)):
            text = str(error)
            if isinstance(error, NameResolutionError) or "Name or service not known" in text:
                return "cannot connect (the host name does not resolve)"
            return "cannot connect (connection refused)" if "refused" in text.lower() else "cannot connect"
        if isinstance(error, (ConnectTimeoutError, requests.ConnectTimeout)) and "timed out" in str(error).lower():
            return f"cannot connect within {timeouts.connect_s:g}s (timeouts.connect_s)"
        if isinstance(error, (ReadTimeoutError, requests.ReadTimeout, TimeoutError)):
            return f"timed out: no answer within {timeouts.read_s:g}s (timeouts.read_s)"
    for error in chain:
        if isinstance(error, (ConnectionError, requests.ConnectionError)) and "refused" in str(error).lower():
            return "cannot connect (connection refused)"
    return ""


# --- a JSON API ---------------------------------------------------------------------------------


@dataclass
class JsonApi:
    """One service endpoint of one environment, e.g. Argo CD's API for `staging`."""

    service: str  # "Argo CD", "artifact store", ...
    env: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry = field(default_factory=Retry)
    session: requests.Session | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = session(self.retry)

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def request(self, method: str, path: str, *, ok: Iterable[int] = (), **kwargs: Any) -> requests.Response:
        """Send one logical request (retries inside the deadline); raise unless 2xx or in `ok`."""
        method = method.upper()
        url = self.url(path)
        where = f"{self.service} ({self.env}) {method} {url}"
        assert self.session is not None
        with deadline(self.timeouts.deadline_s):
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=self.headers,
                    timeout=request_timeout(self.timeouts),
                    allow_redirects=True,
                    **kwargs,
                )
            except (requests.RequestException, DeadlineExceeded) as exc:
                raise ClusterCallError(f"{where} failed: {describe_failure(exc, self.timeouts)}") from exc
        if 200 <= response.status_code < 300 or response.status_code in set(ok):
            return response
        hint = ""
        if response.status_code in RETRY_STATUSES:
            hint = f" (after retries within {self.timeouts.deadline_s:g}s: timeouts.deadline_s in {SETTINGS})"
        raise ClusterCallError(
            f"{where} answered {response.status_code}: {_message(response)}{hint}",
            status=response.status_code,
            body=_json_or_text(response),
        )

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _response_message(content: bytes) -> str:
    import json

    try:
        body = json.loads(content or b"null")
    except ValueError:
        return content.decode(errors="replace").strip()[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or "")[:300]
    return ""


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
