"""One flow at a time per environment on the local backend, as the workflows' `concurrency: <env>`
groups do in CI: a second staging (or production) run waits for the first, up to
`timeouts.lock_s` seconds (0: refuse at once), then stops with one line naming the holder.

The lock is `.mlops/<env>/flow.lock` (filelock: released by the OS when its holder dies, so a
kill -9 never leaves the environment locked); `flow.lock.json` beside it names the holder for
the message. Re-entrant within one thread: a staging run that opens its promotion PR takes the
staging lock once.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .config import Environment
from .errors import MlopsError

LOCK_FILE = "flow.lock"
HOLDER_FILE = "flow.lock.json"
DEFAULT_WAIT_S = 600.0
_HELD = threading.local()


class EnvironmentBusy(MlopsError):
    """Another flow holds the environment for longer than the configured wait."""

    exit_code = 5


def lock_wait(env: Environment) -> float:
    """`timeouts.lock_s` of config/environments.yaml (default 600 s)."""
    return float(getattr(env.timeouts, "lock_s", DEFAULT_WAIT_S))


def _holder(folder: Path) -> str:
    try:
        data = json.loads((folder / HOLDER_FILE).read_text())
        return f"`{data['flow']}` (pid {data['pid']}, since {data['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


@contextlib.contextmanager
def environment_lock(env: Environment, flow: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold `env` for `flow`: wait up to `wait_s` (default `timeouts.lock_s`) for another holder.

    Only the local backend locks here; on a cluster the workflows' concurrency groups serialize runs."""
    if env.backend != "local":
        yield
        return
    from filelock import FileLock, Timeout

    held = _HELD.__dict__.setdefault("envs", set())
    folder = Path(env.local_dir)
    key = str(folder.resolve())
    if key in held:
        yield
        return
    wait = lock_wait(env) if wait_s is None else wait_s
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, timeout=wait, thread_local=False, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise EnvironmentBusy(
            f"{env.name} is busy: {_holder(folder)} holds {folder / LOCK_FILE} and did not finish within "
            f"{wait:g}s; rerun when it has finished (timeouts.lock_s in config/environments.yaml sets the wait, "
            "0 refuses at once)"
        ) from None
    held.add(key)
    try:
        from .fsutil import atomic_write_text

        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(folder / HOLDER_FILE, json.dumps({"flow": flow, "pid": os.getpid(), "since": since}))
        yield
    finally:
        held.discard(key)
        lock.release()
