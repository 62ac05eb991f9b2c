"""The environment's model endpoint and its smoke test.

The model is an MLflow model directory (see `mlrail.mlmodel`): its signature and input example
travel with it. Serving is MLServer's MLflow runtime, what KServe runs for `modelFormat: mlflow`.

Local backend: a real MLServer on 127.0.0.1 (Open Inference Protocol v2), started as a detached
process so that `make serve ENV=staging` returns while the endpoint keeps serving. Its runtime is
`mlrail.serving_runtime.SignatureRuntime`: the stock MLflow runtime, answering a request that does
not match the signature with a 422 JSON error instead of a text 500. Everything about it lives in
`.mlops/<env>/serving/`: `state.json` (pid, port, model, digest), `mlserver.log`, and one
`server-<port>/` folder with MLServer's settings per running server.

A redeploy is blue/green: the new server starts on a fresh port and must be ready before the
state switches to it and the old one stops, so a model that fails to load never replaces a
working endpoint. Cluster endpoints are KServe InferenceServices synced from the overlays; the
smoke test runs against either.

Every HTTP call has a connect and a read timeout and every wait a deadline, from the `timeouts:`
block of config/environments.yaml (`connect_s`, `read_s`, `ready_s`, `deadline_s`); without it the
defaults below fail a hanging endpoint within ~30 s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ArtifactStore, directory_digest
from .config import Config, Environment
from .errors import MlopsError
from .fsutil import atomic_write_text
from .mlmodel import ModelFormatError, check_model_dir

SERVING_DIR = "serving"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
LOG_FILE = "mlserver.log"
PREVIOUS_LOG_FILE = "mlserver.previous.log"
SERVER_DIR_PREFIX = "server-"
HOST = "127.0.0.1"
RUNTIME = "mlrail.serving_runtime.SignatureRuntime"  # MLServer's MLflow runtime + signature checks
STOP_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_LATENCY_MS = 1000.0  # when an environment sets no max_latency_ms gate
TOLERANCE = 1e-9  # served vs offline predictions: the same model, the same floating point

# Popen objects of servers this process started: kept so they are reaped, never garbage-collected
# while running.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServingError(MlopsError):
    """An endpoint could not be started, reached or trusted; names the environment."""


@dataclass(frozen=True)
class Timeouts:
    """Bounds of every call and wait here. Defaults: a hanging endpoint fails within ~30 s."""

    connect_s: float = 5.0  # TCP connect of one HTTP call
    read_s: float = 20.0  # waiting for one response
    ready_s: float = 60.0  # an endpoint becoming ready (a cold MLServer start takes ~6 s on 2 cores)
    deadline_s: float = 30.0  # all of a smoke test's requests after readiness

    @property
    def lock_s(self) -> float:
        """How long to wait for another deploy or stop of the same environment (it may start a
        server, up to three times when a port is taken, and stop the old one)."""
        return 3 * self.ready_s + 2 * STOP_TIMEOUT_SECONDS + 10

    def http(self, remaining: float | None = None) -> tuple[float, float]:
        """(connect, read) for requests, never beyond `remaining` seconds."""
        if remaining is None:
            return (self.connect_s, self.read_s)
        left = max(0.1, remaining)
        return (min(self.connect_s, left), min(self.read_s, left))


def timeouts_for(env: Environment | None) -> Timeouts:
    """The environment's `timeouts` from config (`env.timeouts`), or the defaults."""
    configured = getattr(env, "timeouts", None)
    if configured is None:
        return Timeouts()
    defaults = Timeouts()
    return Timeouts(
        **{name: float(getattr(configured, name, getattr(defaults, name))) for name in Timeouts.__dataclass_fields__}
    )


def declared_model(cfg: Config, env: Environment):
    """The model the environment's release declares (`release.Release.model`: name, version,
    digest, storage_uri, source; version "none" before any model), its storage URI resolved for
    this machine. The one place serving reads it."""
    from dataclasses import replace

    from .release import read_release, resolve_uri

    model = read_release(cfg.root / env.overlay).model
    if _declares_nothing(model):
        return model
    return replace(model, storage_uri=resolve_uri(model.storage_uri, cfg.local_root))


def _declares_nothing(model) -> bool:
    return str(model.version) == "none"


@dataclass(frozen=True)
class EndpointStatus:
    env: str
    url: str
    model_name: str
    version: str
    digest: str
    pid: int
    model_dir: str = ""
    started_at: float = 0.0
    startup_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the local endpoint -------------------------------------------------------------------


class LocalEndpoint:
    """The MLServer process serving one environment's model on 127.0.0.1."""

    def __init__(self, env: Environment, model_name: str) -> None:
        self.env = env
        self.model_name = model_name
        self.dir = env.local_dir / SERVING_DIR
        self.state_path = self.dir / STATE_FILE
        self.log_path = self.dir / LOG_FILE
        self.timeouts = timeouts_for(env)

    # status -------------------------------------------------------------------------------

    def status(self) -> EndpointStatus | None:
        """The running endpoint, or None (a state file whose process is gone is cleaned up)."""
        state = self._read_state()
        if state is None:
            return None
        if not _alive(state["pid"], state["server_dir"]):
            with _locked(self.dir, self.timeouts.lock_s):  # a concurrent deploy may be writing a new state
                again = self._read_state()
                if again is not None and again.get("pid") == state["pid"]:
                    self._forget(state)
            return None
        return _status_from_state(state)

    def ready(self, status: EndpointStatus | None = None) -> bool:
        """Both the server and the model answer their v2 readiness routes (one probe, bounded)."""
        status = status or self.status()
        if status is None:
            return False
        with _session() as session:
            return _is_ready(session, status.url, status.model_name, self.timeouts.http())

    # deploy -------------------------------------------------------------------------------

    def deploy(self, model_dir: Path, version: str, digest: str, timeout: float | None = None) -> EndpointStatus:
        """Serve the MLflow model in `model_dir`; a no-op when that exact model is already served and
        ready. `timeout`: seconds to become ready (default: timeouts.ready_s)."""
        if not self.env.serving:
            raise ServingError(f"{self.env.name} serves no model (serving: false in config/environments.yaml)")
        model_dir = Path(model_dir).resolve()
        try:
            check_model_dir(model_dir)
        except ModelFormatError as exc:
            raise ServingError(f"{self.env.name}: {exc}") from None
        timeout = self.timeouts.ready_s if timeout is None else timeout
        actual = directory_digest(model_dir)
        if actual != digest:  # never serve a model under another model's name
            raise ServingError(f"{self.env.name}: {model_dir} has digest {actual}, not the {digest} to deploy")
        with _locked(self.dir, self.timeouts.lock_s):  # one deploy or stop per environment at a time
            self._remove_orphan_server_dirs()  # a server whose deploy was killed before it recorded it
            current = self.status()
            if (
                current is not None
                and (current.model_name, current.version, current.digest, current.model_dir)
                == (self.model_name, str(version), digest, str(model_dir))
                and self.ready(current)
            ):
                return current
            started = self._start(model_dir, str(version), digest, timeout)
            if current is not None:  # blue/green: the old server stops only once the new one is ready
                self._stop_server(current.pid, self.dir / f"{SERVER_DIR_PREFIX}{_port(current.url)}")
            return started

    def stop(self) -> bool:
        """Stop the endpoint; True when a server was running."""
        if not self.dir.is_dir():
            return False
        with _locked(self.dir, self.timeouts.lock_s):
            state = self._read_state()
            if state is None:
                return self._remove_orphan_server_dirs() > 0
            running = _alive(state["pid"], state["server_dir"])
            if running:
                self._stop_server(state["pid"], Path(state["server_dir"]))
            self._forget(state)
            return running

    # internals ----------------------------------------------------------------------------

    def _start(self, model_dir: Path, version: str, digest: str, timeout: float) -> EndpointStatus:
        executable = _mlserver_executable()
        self.dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            http_port, grpc_port = _free_ports(2)
            server_dir = self.dir / f"{SERVER_DIR_PREFIX}{http_port}"
            self._write_settings(server_dir, model_dir, version, digest, http_port, grpc_port)
            if self.log_path.exists():
                os.replace(self.log_path, self.dir / PREVIOUS_LOG_FILE)
            with open(self.log_path, "ab") as log:
                began = time.perf_counter()
                process = subprocess.Popen(
                    [executable, "start", str(server_dir)],
                    cwd=server_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # detached: outlives the command that started it
                    env=_server_environment(),
                )
            _CHILDREN[process.pid] = process
            url = f"http://{HOST}:{http_port}"
            try:
                failure = self._wait_ready(process, url, timeout)
                if failure is None:
                    state = {
                        "env": self.env.name,
                        "url": url,
                        "model_name": self.model_name,
                        "version": version,
                        "digest": digest,
                        "pid": process.pid,
                        "model_dir": str(model_dir),
                        "started_at": round(time.time(), 3),
                        "startup_seconds": round(time.perf_counter() - began, 3),
                        "http_port": http_port,
                        "grpc_port": grpc_port,
                        "server_dir": str(server_dir),
                        "log": str(self.log_path),
                    }
                    atomic_write_text(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")
                    return _status_from_state(state)
            except BaseException:  # interrupted: leave no server behind that no state file describes
                self._stop_server(process.pid, server_dir)
                raise
            self._stop_server(process.pid, server_dir)
            tail = _tail(self.log_path)
            if "address already in use" in tail.lower() and attempt < 2:
                continue
            raise ServingError(
                f"{self.env.name}: MLServer did not become ready ({failure}); last lines of {self.log_path}:\n{tail}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_settings(
        self, server_dir: Path, model_dir: Path, version: str, digest: str, http_port: int, grpc_port: int
    ) -> None:
        if server_dir.exists():
            shutil.rmtree(server_dir)
        server_dir.mkdir(parents=True)
        settings = {
            "debug": False,
            "host": HOST,
            "http_port": http_port,
            "grpc_port": grpc_port,  # MLServer 1.7 always starts gRPC: give it a free port too
            "parallel_workers": 0,  # inference in the server process (its workers crash with uvloop >= 0.22)
            "metrics_endpoint": None,  # no Prometheus server: one less port, faster start
            "load_models_at_startup": True,
        }
        # No inputs/outputs here: the MLflow runtime derives the metadata from the model's signature.
        model_settings = {
            "name": self.model_name,
            "implementation": RUNTIME,
            "platform": "mlflow",
            "versions": [version],
            "parameters": {"uri": str(model_dir), "version": version, "extra": {"digest": digest}},
        }
        atomic_write_text(server_dir / "settings.json", json.dumps(settings, indent=2) + "\n")
        # In a folder named after the model, where MLServer expects it (else it logs a warning).
        model_folder = server_dir / self.model_name
        atomic_write_text(model_folder / "model-settings.json", json.dumps(model_settings, indent=2) + "\n")

    def _wait_ready(self, process: subprocess.Popen, url: str, timeout: float) -> str | None:
        """None once ready; otherwise why not."""
        deadline = time.monotonic() + timeout
        with _session() as session:
            while time.monotonic() < deadline:
                code = process.poll()
                if code is not None:
                    return f"the server exited with code {code}"
                if _is_ready(session, url, self.model_name, self.timeouts.http(deadline - time.monotonic())):
                    return None
                time.sleep(0.05)
        return f"not ready after {timeout:.0f}s (timeouts.ready_s in config/environments.yaml raises it)"

    def _stop_server(self, pid: int, server_dir: Path) -> None:
        if _alive(pid, str(server_dir)):
            _terminate(pid, str(server_dir))
        self._remove_server_dir(server_dir)

    def _remove_server_dir(self, server_dir: Path | str) -> None:
        """Delete a server's settings folder: only ever one inside this serving directory, whatever
        a (hand-edited) state file says."""
        folder = Path(server_dir)
        if folder.parent == self.dir and folder.name.startswith(SERVER_DIR_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)

    def _read_state(self) -> dict | None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.state_path.unlink(missing_ok=True)  # a state file we cannot read describes nothing we can trust
            return None
        required = {"env", "pid", "url", "model_name", "version", "digest", "server_dir"}
        if not isinstance(state, dict) or not required <= state.keys():
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def _forget(self, state: dict) -> None:
        self._remove_server_dir(state.get("server_dir", ""))
        self.state_path.unlink(missing_ok=True)
        self._remove_orphan_server_dirs()

    def _remove_orphan_server_dirs(self) -> int:
        """Stop servers no state file describes, and remove their settings folders; returns how
        many were running. They are left by a deploy killed between starting a server and
        recording it, and are ours by construction: their command line names a folder inside
        this environment's serving directory."""
        if not self.dir.is_dir():
            return 0
        state = self._read_state_quietly() or {}
        stopped = 0
        for folder in self.dir.glob(f"{SERVER_DIR_PREFIX}*"):
            if state.get("server_dir") == str(folder):
                continue
            for pid in _pids_serving(folder):
                _terminate(pid, str(folder))
                stopped += 1
            self._remove_server_dir(folder)
        return stopped

    def _read_state_quietly(self) -> dict | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None


def _status_from_state(state: dict) -> EndpointStatus:
    return EndpointStatus(
        env=state["env"],
        url=state["url"],
        model_name=state["model_name"],
        version=str(state["version"]),
        digest=state["digest"],
        pid=int(state["pid"]),
        model_dir=state.get("model_dir", ""),
        started_at=float(state.get("started_at", 0.0)),
        startup_seconds=float(state.get("startup_seconds", 0.0)),
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- processes ----------------------------------------------------------------------------

_HELD = threading.local()  # the serving folders this thread holds the lock of


@contextlib.contextmanager
def _locked(folder: Path, timeout: float):
    """An exclusive lock on an environment's serving folder, across processes and threads
    (re-entrant within a thread: deploy calls status, which may clean up under the lock)."""
    from filelock import FileLock, Timeout

    held = _HELD.__dict__.setdefault("folders", set())
    key = str(folder)
    if key in held:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    # thread_local=False: each call has its own lock object, so two threads of one process
    # exclude each other like two processes do.
    lock = FileLock(folder / LOCK_FILE, timeout=timeout, thread_local=False, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise ServingError(
            f"another serve or stop has held {folder / LOCK_FILE} for more than {timeout:.0f}s; "
            "wait for it (timeouts.ready_s in config/environments.yaml raises the wait)"
        ) from None
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        lock.release()


def _mlserver_executable() -> str:
    beside = Path(sys.executable).parent / "mlserver"
    found = str(beside) if beside.is_file() else shutil.which("mlserver")
    if not found:
        raise ServingError("mlserver is not installed: install the serve extra (pip install 'mlrail[serve]')")
    return found


def _server_environment() -> dict[str, str]:
    env = dict(os.environ)
    # MLSERVER_* variables would override the settings files; the files are the whole truth here.
    for key in [k for k in env if k.startswith("MLSERVER_")]:
        del env[key]
    return env


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _reap(pid: int) -> bool:
    """Collect the exit status of a server this process started; True if it has exited."""
    process = _CHILDREN.get(pid)
    if process is None:
        return False  # not our child: its parent (or init) reaps it
    if process.poll() is None:
        return False
    _CHILDREN.pop(pid, None)
    return True


def _alive(pid: int, marker: str) -> bool:
    """pid is a live MLServer started for `marker` (its settings folder), not a reused pid."""
    import psutil

    if not isinstance(pid, int) or pid <= 0 or _reap(pid):
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker in process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False  # gone, or someone else's process now holds this pid


def _pids_serving(folder: Path) -> list[int]:
    """Live processes whose command line names this settings folder."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        pid, argv = process.info["pid"], process.info["cmdline"] or []
        if pid != os.getpid() and str(folder) in argv and _alive(pid, str(folder)):
            found.append(pid)
    return found


def _terminate(pid: int, marker: str) -> None:
    """SIGTERM the server's process group, then SIGKILL if it lingers."""
    import psutil

    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # start_new_session made the server its group leader
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        child = _CHILDREN.get(pid)
        try:
            if child is not None:
                child.wait(wait)  # our child: wait() also reaps it
                _CHILDREN.pop(pid, None)
                return
            psutil.Process(pid).wait(wait)
            return
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            continue
        except psutil.NoSuchProcess:
            return


# --- HTTP: MLServer's types and codecs, every call bounded ---------------------------------------


def _session():
    import requests

    return requests.Session()


def _get(session, url: str, timeout: tuple[float, float]):
    return session.get(url, timeout=timeout)


def _is_ready(session, url: str, model_name: str, timeout: tuple[float, float]) -> bool:
    import requests

    try:
        return (
            _get(session, f"{url}/v2/health/ready", timeout).status_code == 200
            and _get(session, f"{url}/v2/models/{model_name}/ready", timeout).status_code == 200
        )
    except requests.RequestException:
        return False


def _mlserver():
    try:
        from mlserver import codecs, types
    except ImportError:
        raise ServingError("mlserver is not installed: install the serve extra (pip install 'mlrail[serve]')") from None
    return codecs, types


def encode_request(data: Any):
    """An Open Inference Protocol v2 request (mlserver.types.InferenceRequest) for `data`: a
    DataFrame (one input per column, PandasCodec), an ndarray (NumpyCodec) or a dict of arrays."""
    import numpy as np
    import pandas as pd

    codecs, types = _mlserver()
    if isinstance(data, types.InferenceRequest):
        return data
    if isinstance(data, pd.DataFrame):
        # pandas >= 3 strings are `str`, which MLServer 1.7's codec does not know: give it objects.
        frame = data.copy()
        for column in frame.columns:
            if frame[column].dtype.kind in "OTU" or str(frame[column].dtype) in ("str", "string"):
                frame[column] = frame[column].astype(object)
        return codecs.PandasCodec.encode_request(frame)
    if isinstance(data, dict):
        return types.InferenceRequest(
            inputs=[codecs.NumpyCodec.encode_input(str(name), np.asarray(value)) for name, value in data.items()]
        )
    return codecs.NumpyCodec.encode_request(np.asarray(data))


def input_example(model_dir: Path | str):
    """The served model's own input example (saved with it in the MLflow model directory), as an
    mlserver.types.InferenceRequest."""
    from .mlmodel import input_example_frame

    return encode_request(input_example_frame(model_dir))


def example_rows(example: Any) -> list[Any]:
    """The example split into one-row requests' data (DataFrame rows, array rows)."""
    import numpy as np
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        return [example.iloc[[i]] for i in range(len(example))]
    if isinstance(example, dict):
        arrays = {k: np.asarray(v) for k, v in example.items()}
        count = min(len(a) for a in arrays.values())
        return [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(count)]
    array = np.asarray(example)
    return [array[i : i + 1] for i in range(len(array))]


def infer(
    url: str,
    model_name: str,
    data: Any,
    *,
    timeouts: Timeouts | None = None,
    session=None,
    deadline: float | None = None,
):
    """POST /v2/models/<name>/infer; returns the mlserver.types.InferenceResponse. `data` is an
    InferenceRequest or anything `encode_request` takes. A 4xx/5xx is a ServingError quoting the
    endpoint's JSON error."""
    import requests

    _, types = _mlserver()
    timeouts = timeouts or Timeouts()
    request = encode_request(data)
    endpoint = f"{url.rstrip('/')}/v2/models/{model_name}/infer"
    remaining = None if deadline is None else deadline - time.monotonic()
    try:
        response = (session or requests).post(
            endpoint,
            data=request.model_dump_json(exclude_none=True),
            headers={"Content-Type": "application/json"},
            timeout=timeouts.http(remaining),
        )
    except requests.Timeout:
        raise ServingError(f"{endpoint} did not answer within {timeouts.read_s:.0f}s (timeouts.read_s)") from None
    except requests.RequestException as exc:
        raise ServingError(f"{endpoint} is unreachable: {exc.__class__.__name__}") from None
    if response.status_code != 200:
        raise ServingError(f"{endpoint} answered {response.status_code}: {_error_text(response)}")
    try:
        return types.InferenceResponse.model_validate_json(response.content)
    except ValueError:
        raise ServingError(
            f"{endpoint} answered with a body that is not a v2 response: {response.text[:200]}"
        ) from None


def _error_text(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"(not JSON) {response.text[:300]}"
    return str(body.get("error", body) if isinstance(body, dict) else body)[:500]


def decode_outputs(response) -> list:
    """Each output tensor of a v2 response as a numpy array (NumpyCodec)."""
    codecs, _ = _mlserver()
    return [codecs.NumpyCodec.decode_output(output) for output in response.outputs]


def predict(url: str, model_name: str, data: Any, timeouts: Timeouts | None = None) -> list:
    """The endpoint's first output for `data`, as a flat list (one prediction per row)."""
    outputs = decode_outputs(infer(url, model_name, data, timeouts=timeouts))
    if not outputs:
        raise ServingError(f"{url}: the response holds no output tensor")
    return outputs[0].reshape(len(outputs[0]), -1).squeeze(axis=1).tolist() if outputs[0].ndim else []


# --- environment-level operations -----------------------------------------------------------


def _require_serving(cfg: Config, env_name: str) -> Environment:
    env = cfg.env(env_name)
    if not env.serving:
        raise ServingError(f"{env.name} serves no model (serving: false in config/environments.yaml)")
    return env


def _require_local_serving(cfg: Config, env_name: str) -> Environment:
    env = _require_serving(cfg, env_name)
    if env.backend != "local":
        raise ServingError(
            f"{env.name} uses the cluster backend: its endpoint is the KServe InferenceService synced from "
            f"{env.overlay} ({env.cluster.endpoint_url}); `sync` deploys it"
        )
    return env


def deploy_from_overlay(cfg: Config, env_name: str) -> EndpointStatus:
    """Serve exactly the model the overlay declares, after verifying it in the env's store."""
    env = _require_local_serving(cfg, env_name)
    model = declared_model(cfg, env)
    if _declares_nothing(model):
        raise ServingError(
            f"{env.overlay}/release.yaml declares no model yet (modelVersion: none); register and promote one first"
        )
    store = ArtifactStore(env)
    store.verify(model.storage_uri, model.digest)  # never switch to a missing or mismatched model
    return LocalEndpoint(env, model.name).deploy(store.local_path(model.storage_uri), model.version, model.digest)


def endpoint(cfg: Config, env_name: str) -> LocalEndpoint:
    return LocalEndpoint(cfg.env(env_name), cfg.model_name)


def endpoints(cfg: Config) -> dict[str, EndpointStatus | None]:
    """The local endpoint status of every environment (None: not running)."""
    return {name: _status_any_model(env) for name, env in cfg.environments.items()}


def _status_any_model(env: Environment) -> EndpointStatus | None:
    # The state file records the model name; the endpoint's name argument only matters for deploy.
    return LocalEndpoint(env, "").status()


def stop_all(cfg: Config) -> list[str]:
    """Stop every environment's endpoint; returns the environments whose server was running."""
    return [name for name, env in cfg.environments.items() if LocalEndpoint(env, "").stop()]


# --- smoke test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeReport:
    ready: bool
    metadata_ok: bool
    schema_ok: bool
    predictions_match: bool
    samples: int
    p95_ms: float
    max_latency_ms: float
    passed: bool
    env: str = ""
    url: str = ""
    model_name: str = ""
    version: str = ""
    digest: str = ""
    serves_overlay: bool = True  # the endpoint serves the model the overlay declares
    example_rows: int = 0
    inputs: tuple[str, ...] = ()  # the signature's input names, as the metadata advertises them
    failures: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        data["inputs"] = list(self.inputs)
        return data

    def rows(self) -> list[dict[str, str]]:
        """One row per check, for `console.table`."""

        def mark(ok: bool) -> str:
            return "pass" if ok else "FAIL"

        latency_ok = self.p95_ms <= self.max_latency_ms
        shown = ", ".join(self.inputs[:4]) + (f", ... ({len(self.inputs)} inputs)" if len(self.inputs) > 4 else "")
        return [
            {"check": "ready (/v2/health/ready, model ready)", "result": mark(self.ready), "detail": self.url},
            {"check": "serves the declared model", "result": mark(self.serves_overlay), "detail": self.digest},
            {"check": "metadata = model signature", "result": mark(self.metadata_ok), "detail": shown},
            {"check": "response schema (v2)", "result": mark(self.schema_ok), "detail": ""},
            {
                "check": "predictions = offline model",
                "result": mark(self.predictions_match),
                "detail": f"the model's input example ({self.example_rows} rows)",
            },
            {
                "check": "p95 latency",
                "result": mark(latency_ok and self.samples > 0),
                "detail": f"{self.p95_ms:.1f} ms over {self.samples} requests (max {self.max_latency_ms:.0f} ms)",
            },
        ]


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def smoke(cfg: Config, env_name: str, samples: int = 20, url: str | None = None) -> SmokeReport:
    """Smoke-test the environment's endpoint with the served model's own input example: the local
    MLServer, or on the cluster backend the synced InferenceService at `url` (the status.url sync
    reported), else `cluster.endpoint_url`."""
    env = _require_serving(cfg, env_name)
    model = declared_model(cfg, env)
    max_latency = float(env.gates.get("max_latency_ms", DEFAULT_MAX_LATENCY_MS))
    timeouts = timeouts_for(env)
    if env.backend != "local":
        if _declares_nothing(model):
            raise ServingError(
                f"{env.overlay}/release.yaml declares no model yet (modelVersion: none): nothing to smoke-test"
            )
        store = ArtifactStore(env)
        store.verify(model.storage_uri, model.digest)
        report = smoke_endpoint(
            url or env.cluster.endpoint_url,
            model.name,
            store.local_path(model.storage_uri),
            samples=samples,
            max_latency_ms=max_latency,
            timeouts=timeouts,
        )
        # KServe's v2 routes do not expose the served digest: sync verified it; the name is checked.
        return _with(report, env=env.name, version=str(model.version), digest=model.digest)
    status = _status_any_model(env)
    if status is None:
        raise ServingError(f"no {env.name} endpoint is running; start it with `make serve ENV={env.name}`")
    failures: list[str] = []
    serves = not _declares_nothing(model) and model.digest == status.digest and str(model.version) == status.version
    if not serves:
        failures.append(
            f"the endpoint serves version {status.version} ({status.digest}) but {env.overlay}/release.yaml declares "
            f"version {model.version} ({model.digest})"
        )
    model_dir = Path(status.model_dir)
    try:
        unchanged = directory_digest(model_dir) == status.digest
    except MlopsError:
        unchanged = False
    if not unchanged:
        failures.append(f"{model_dir} no longer holds the served model ({status.digest})")
        return SmokeReport(
            ready=False, metadata_ok=False, schema_ok=False, predictions_match=False, samples=0, p95_ms=0.0,
            max_latency_ms=max_latency, passed=False, env=env.name, url=status.url, model_name=status.model_name,
            version=status.version, digest=status.digest, serves_overlay=serves, failures=tuple(failures),
        )  # fmt: skip
    report = smoke_endpoint(
        status.url,
        status.model_name,
        model_dir,
        version=status.version,
        samples=samples,
        max_latency_ms=max_latency,
        timeouts=timeouts,
    )
    return _with(
        report, env=env.name, digest=status.digest, serves_overlay=serves, failures=tuple(failures) + report.failures
    )


def _with(report: SmokeReport, **changes: Any) -> SmokeReport:
    data = {**asdict(report), **changes}
    data["failures"] = tuple(data["failures"])
    data["inputs"] = tuple(data["inputs"])
    data["passed"] = report.passed and not data["failures"] and data["serves_overlay"]
    return SmokeReport(**data)


def smoke_endpoint(
    url: str,
    model_name: str,
    model_dir: Path | str,
    *,
    version: str | None = None,
    samples: int = 20,
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS,
    timeouts: Timeouts | None = None,
) -> SmokeReport:
    """Check an endpoint against the MLflow model in `model_dir` (the one it should serve):
    readiness, metadata = the signature, v2 response schema, parity of the model's input example
    with offline predictions of the same directory, p95 latency of `samples` one-row requests.
    Bounded: readiness by timeouts.ready_s, everything after it by timeouts.deadline_s."""
    import requests

    from .mlmodel import input_example_frame, load_pyfunc, mlflow_signature

    if samples < 1:
        raise ServingError(f"samples is {samples}; expected at least 1")
    timeouts = timeouts or Timeouts()
    url = url.rstrip("/")
    failures: list[str] = []
    signature = mlflow_signature(model_dir)
    example = input_example_frame(model_dir)
    rows = example_rows(example)

    def report(**checks: Any) -> SmokeReport:
        values = {"ready": False, "metadata_ok": False, "schema_ok": False, "predictions_match": False}
        values.update(checks)
        latencies = values.pop("latencies", [])
        p95 = round(_p95(latencies), 3)
        if latencies and p95 > max_latency_ms:
            failures.append(f"p95 latency {p95:.1f} ms exceeds max_latency_ms {max_latency_ms:.0f}")
        return SmokeReport(
            **values,
            samples=len(latencies),
            p95_ms=p95,
            max_latency_ms=max_latency_ms,
            passed=not failures and all(values.values()),
            url=url,
            model_name=model_name,
            version=version or "",
            example_rows=len(rows),
            inputs=tuple(_expected_metadata(signature)[0]),
            failures=tuple(failures),
        )

    with _session() as session:
        # Readiness: polled, since a just-synced InferenceService may still be loading the model.
        ready_by = time.monotonic() + timeouts.ready_s
        ready = False
        while not ready and time.monotonic() < ready_by:
            ready = _is_ready(session, url, model_name, timeouts.http(ready_by - time.monotonic()))
            if not ready:
                time.sleep(min(0.5, max(0.0, ready_by - time.monotonic())))
        if not ready:
            failures.append(
                f"{url} is not ready after {timeouts.ready_s:.0f}s (/v2/health/ready and /v2/models/{model_name}/ready)"
            )
            return report()
        deadline = time.monotonic() + timeouts.deadline_s

        metadata_ok = False
        try:
            meta = _get(session, f"{url}/v2/models/{model_name}", timeouts.http(deadline - time.monotonic()))
            problem = _metadata_problem(meta, model_name, version, signature)
            metadata_ok = problem is None
            if problem:
                failures.append(f"metadata route: {problem}")
        except requests.RequestException as exc:
            failures.append(f"metadata route failed: {exc.__class__.__name__}")
            return report(ready=True)

        schema_ok, predictions_match, latencies = False, False, []
        try:
            batch = infer(url, model_name, example, timeouts=timeouts, session=session, deadline=deadline)
            schema_problem = _schema_problem(batch, model_name, version, len(rows))
            schema_ok = schema_problem is None
            if schema_problem:
                failures.append(f"response schema: {schema_problem}")
            else:
                mismatch = _parity_problem(decode_outputs(batch), load_pyfunc(model_dir).predict(example))
                predictions_match = mismatch is None
                if mismatch:
                    failures.append(f"the endpoint's predictions differ from the model directory's: {mismatch}")
            for index in range(samples):  # latency: one request per row, as a client sends them
                if time.monotonic() >= deadline:
                    failures.append(
                        f"the smoke requests took longer than timeouts.deadline_s ({timeouts.deadline_s:.0f}s)"
                    )
                    break
                began = time.perf_counter()
                infer(url, model_name, rows[index % len(rows)], timeouts=timeouts, session=session, deadline=deadline)
                latencies.append((time.perf_counter() - began) * 1000)
        except ServingError as exc:
            failures.append(str(exc))
    return report(
        ready=True,
        metadata_ok=metadata_ok,
        schema_ok=schema_ok,
        predictions_match=predictions_match,
        latencies=latencies,
    )


def _expected_metadata(signature) -> tuple[list[str], list[tuple], list[tuple]]:
    """(input names, inputs, outputs) the MLflow runtime advertises for this signature, as
    (name, datatype, shape) tuples: the runtime's own translation, so a change in it shows here."""
    from mlserver_mlflow.metadata import DefaultInputPrefix, DefaultOutputPrefix, to_metadata_tensors

    inputs = to_metadata_tensors(signature.inputs, prefix=DefaultInputPrefix) if signature.inputs else []
    outputs = to_metadata_tensors(signature.outputs, prefix=DefaultOutputPrefix) if signature.outputs else []

    def key(tensors) -> list[tuple]:
        return [(t.name, str(getattr(t.datatype, "value", t.datatype)), list(t.shape)) for t in tensors]

    return [t.name for t in inputs], key(inputs), key(outputs)


def _metadata_problem(response, name: str, version: str | None, signature) -> str | None:
    if response.status_code != 200:
        return f"GET /v2/models/{name} answered {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "the body is not JSON"
    if body.get("name") != name:
        return f"name is {body.get('name')!r}, expected {name!r}"
    if version is not None and version not in (body.get("versions") or []):
        return f"versions are {body.get('versions')}, expected to include {version}"
    _, inputs, outputs = _expected_metadata(signature)

    def key(tensors) -> list[tuple]:
        return [(t.get("name"), t.get("datatype"), list(t.get("shape") or [])) for t in tensors or []]

    if key(body.get("inputs")) != inputs:
        return f"inputs are {key(body.get('inputs'))}, but the model's signature gives {inputs}"
    if outputs and key(body.get("outputs")) != outputs:
        return f"outputs are {key(body.get('outputs'))}, but the model's signature gives {outputs}"
    return None


def _schema_problem(response, name: str, version: str | None, rows: int) -> str | None:
    """None when the response is a v2 response for `name`/`version` with one row per example row."""
    if response.model_name != name:
        return f"model_name is {response.model_name!r}, expected {name!r}"
    if version is not None and str(response.model_version) != version:
        return f"model_version is {response.model_version!r}, expected {version!r}"
    if not response.outputs:
        return "it holds no outputs"
    for tensor in response.outputs:
        shape = list(tensor.shape)
        data = getattr(tensor.data, "root", tensor.data)
        if not shape or shape[0] != rows:
            return f"{tensor.name} has shape {shape}, expected [{rows}, ...]"
        if isinstance(data, list) and len(data) != math.prod(shape):
            return f"{tensor.name} holds {len(data)} values for shape {shape}"
    return None


def _as_arrays(prediction: Any) -> list:
    """An offline pyfunc prediction as one array per output, in the runtime's output order."""
    import numpy as np
    import pandas as pd

    if isinstance(prediction, pd.DataFrame):
        return [prediction[column].to_numpy() for column in prediction.columns]
    if isinstance(prediction, dict):
        return [np.asarray(value) for value in prediction.values()]
    if isinstance(prediction, pd.Series):
        return [prediction.to_numpy()]
    return [np.asarray(prediction)]


def _parity_problem(served: list, offline: Any) -> str | None:
    import numpy as np

    expected = _as_arrays(offline)
    if len(served) != len(expected):
        return f"{len(served)} outputs served, {len(expected)} offline"
    for index, (got, want) in enumerate(zip(served, expected, strict=True)):
        got, want = np.asarray(got), np.asarray(want)
        if got.size != want.size:
            return f"output {index} has {got.size} values served, {want.size} offline"
        got, want = got.reshape(-1), want.reshape(-1)
        if want.dtype.kind in "fc" or got.dtype.kind in "fc":
            same = np.allclose(got.astype(float), want.astype(float), rtol=0, atol=TOLERANCE, equal_nan=True)
        else:
            same = [_plain(v) for v in got.tolist()] == [_plain(v) for v in want.tolist()]
        if not same:
            return f"output {index}: served {got.tolist()[:5]}, offline {want.tolist()[:5]}"
    return None


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
