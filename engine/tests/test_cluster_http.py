"""The HTTP policy every cluster call goes through: urllib3 Retry on a requests.Session,
(connect, read) timeouts, a deadline per logical call, errors that say where and what to raise.

`LocalServer` and `closed_port` (re-exported from the simulation) are what the other cluster
tests answer from."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from mlrail.cluster.http import ClusterCallError, JsonApi, Retry, Timeouts, deadline, remaining
from sim import LocalServer, SilentServer, closed_port

__all__ = ["NO_WAIT", "FAST", "LocalServer", "closed_port"]

NO_WAIT = Retry(attempts=3, backoff=0.0)
FAST = Timeouts(connect_s=0.5, read_s=0.5, deadline_s=2.0)


def test_get_is_retried_on_502_503_and_succeeds():
    answers = iter([(502, {}, "bad gateway"), (503, {}, "busy"), (200, {}, {"ok": True})])
    with LocalServer(lambda request: next(answers)) as server:
        api = JsonApi("Argo CD", "staging", server.url, retry=NO_WAIT)
        assert api.json("GET", "/thing") == {"ok": True}
        assert len(server.requests) == 3


def test_a_500_is_not_retried_and_a_post_is_not_resent_after_a_503():
    with LocalServer(lambda request: (503, {}, {"message": "busy"})) as server:
        api = JsonApi("Argo CD", "production", server.url, retry=NO_WAIT)
        with pytest.raises(ClusterCallError) as caught:
            api.json("POST", "/things", json={"a": 1})
        assert len(server.requests) == 1  # it may have been applied: never sent twice
        message = str(caught.value)
        assert "Argo CD (production) POST" in message and f"{server.url}/things" in message
        assert "503" in message and "busy" in message and caught.value.status == 503
    with LocalServer(lambda request: (500, {}, {"message": "boom"})) as server:
        with pytest.raises(ClusterCallError, match="answered 500: boom"):
            JsonApi("Argo CD", "staging", server.url, retry=NO_WAIT).json("GET", "/x")
        assert len(server.requests) == 1


def test_a_429_is_retried_for_any_method_after_retry_after():
    answers = iter([(429, {"Retry-After": "1"}, {"message": "slow down"}), (201, {}, {"id": 7})])
    with LocalServer(lambda request: next(answers)) as server:
        began = time.monotonic()
        assert JsonApi("Argo CD", "staging", server.url, retry=NO_WAIT).json("POST", "/x", json={}) == {"id": 7}
        assert time.monotonic() - began >= 0.9  # the server's Retry-After was honoured
        assert [r.method for r in server.requests] == ["POST", "POST"]


def test_retries_stop_after_the_last_attempt():
    with LocalServer(lambda request: (503, {}, "down")) as server:
        api = JsonApi("Argo CD", "staging", server.url, retry=NO_WAIT)
        with pytest.raises(ClusterCallError, match=r"Argo CD \(staging\) GET .* answered 503: down"):
            api.json("GET", "/x")
        assert len(server.requests) == NO_WAIT.attempts


def test_backoff_grows_between_attempts():
    stamps = []

    def route(request):
        stamps.append(time.monotonic())
        return 503, {}, "down"

    with LocalServer(route) as server, pytest.raises(ClusterCallError):
        JsonApi("Argo CD", "sandbox", server.url, retry=Retry(attempts=4, backoff=0.1)).json("GET", "/x")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # urllib3: no wait before the first retry, then backoff × 2, × 4
    assert len(gaps) == 3 and gaps[1] >= 0.18 and gaps[2] >= 0.38 and gaps[2] > gaps[1] > gaps[0]


def test_a_retry_after_beyond_the_deadline_fails_now_naming_the_setting():
    with LocalServer(lambda request: (503, {"Retry-After": "120"}, "maintenance")) as server:
        began = time.monotonic()
        with pytest.raises(ClusterCallError) as caught:
            JsonApi("Argo CD", "staging", server.url, timeouts=FAST, retry=NO_WAIT).json("GET", "/x")
        assert time.monotonic() - began < 1.0 and len(server.requests) == 1
        assert "answered 503: maintenance" in str(caught.value)
        assert "timeouts.deadline_s in config/environments.yaml" in str(caught.value)


def test_a_server_that_never_answers_fails_within_the_deadline():
    """It accepts the connection and sends nothing; GETs are retried, but only until the deadline."""
    timeouts = Timeouts(connect_s=0.5, read_s=0.4, deadline_s=1.5)
    with SilentServer() as server:
        api = JsonApi("Argo CD", "production", server.url, timeouts=timeouts, retry=Retry(attempts=50, backoff=0.0))
        began = time.monotonic()
        with pytest.raises(ClusterCallError) as caught:
            api.json("GET", "/api/v1/applications/x")
        elapsed = time.monotonic() - began
        assert 1.2 <= elapsed < 2.5, elapsed
        assert server.accepted >= 3  # retried meanwhile
        message = str(caught.value)
        assert f"Argo CD (production) GET {server.url}/api/v1/applications/x failed: gave up after 1.5s" in message
        assert "raise timeouts.deadline_s in config/environments.yaml" in message
        assert "no answer within 0.4s (timeouts.read_s)" in message


def test_a_post_to_a_server_that_never_answers_is_sent_once():
    with SilentServer() as server:
        api = JsonApi("Argo CD", "staging", server.url, timeouts=FAST, retry=NO_WAIT)
        began = time.monotonic()
        with pytest.raises(ClusterCallError, match=r"POST .* failed: timed out: no answer within 0\.5s"):
            api.json("POST", "/x", json={})
        assert time.monotonic() - began < 1.5 and server.accepted == 1


def test_one_slow_answer_is_cut_at_the_read_timeout():
    def slow(request):
        time.sleep(1.0)
        return 200, {}, {}

    with LocalServer(slow) as server:
        api = JsonApi("Argo CD", "staging", server.url, timeouts=Timeouts(0.5, 0.2, 5.0), retry=Retry(attempts=1))
        with pytest.raises(
            ClusterCallError, match=r"Argo CD \(staging\) GET http://127\.0\.0\.1:\d+/slow failed: timed"
        ):
            api.json("GET", "/slow")


def test_connection_refused_names_environment_and_endpoint():
    url = f"http://127.0.0.1:{closed_port()}"
    api = JsonApi("Kubeflow Pipelines", "production", url, timeouts=FAST, retry=NO_WAIT)
    with pytest.raises(ClusterCallError) as caught:
        api.json("POST", "/apis/v2beta1/runs", json={})
    assert (
        f"Kubeflow Pipelines (production) POST {url}/apis/v2beta1/runs failed: cannot connect (connection refused)"
        in str(caught.value)
    )


def test_nested_deadlines_keep_the_earlier_one():
    assert remaining() is None
    with deadline(10):
        with deadline(1):
            assert remaining() <= 1
        with deadline(100):
            assert 9 < remaining() <= 10
    assert remaining() is None


def test_timeouts_come_from_an_environment_or_default_to_about_30_seconds():
    assert Timeouts.of(None) == Timeouts() and Timeouts().deadline_s <= 30
    env = SimpleNamespace(timeouts=SimpleNamespace(connect_s=1, read_s=2, deadline_s=3, run_s=3600))
    assert Timeouts.of(env) == Timeouts(1.0, 2.0, 3.0)
    assert Timeouts.of(SimpleNamespace(timeouts={"read_s": 7})) == Timeouts(read_s=7.0)
