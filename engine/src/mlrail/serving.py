"""The environment's model endpoint and its smoke test.

Local backend: a real MLServer (the runtime KServe's InferenceService declares for sklearn models,
speaking the Open Inference Protocol v2) on 127.0.0.1, started as a detached process so that
`make serve ENV=staging` returns while the endpoint keeps serving. Everything about it lives in
`.mlops/<env>/serving/`: `state.json` (pid, port, model, digest), `mlserver.log`, and one
`server-<port>/` folder with MLServer's settings per running server.

A redeploy is blue/green: the new server starts on a fresh port and must be ready before the
state switches to it and the old one stops, so a model that fails to load never replaces a
working endpoint. Cluster endpoints are KServe InferenceServices synced from the overlays.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from .modelref import read_model_ref

# = components.train.MODEL_FILE, the name KServe's sklearn runtime loads. Not imported from there:
# that module loads scikit-learn (~2 s), which `stop` and `endpoints` do not need. A test checks both agree.
MODEL_FILE = "model.joblib"
SERVING_DIR = "serving"
STATE_FILE = "state.json"
LOG_FILE = "mlserver.log"
PREVIOUS_LOG_FILE = "mlserver.previous.log"
SERVER_DIR_PREFIX = "server-"
HOST = "127.0.0.1"
INPUT_NAME = "input-0"
PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"
SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"
READY_TIMEOUT_SECONDS = 90.0  # a cold start (empty page cache) takes ~6 s on 2 cores, a warm one ~1.6 s
STOP_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_LATENCY_MS = 1000.0  # when an environment sets no max_latency_ms gate
PROBA_TOLERANCE = 1e-9
NUMERIC_DATATYPES = {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP32", "FP64"}

# Popen objects of servers this process started: kept so they are reaped, never garbage-collected
# while running.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServingError(MlopsError):
    """An endpoint could not be started, reached or trusted; names the environment."""


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

    # status -------------------------------------------------------------------------------

    def status(self) -> EndpointStatus | None:
        """The running endpoint, or None (a state file whose process is gone is cleaned up)."""
        state = self._read_state()
        if state is None:
            return None
        if not _alive(state["pid"], state["server_dir"]):
            with _locked(self.dir):  # a concurrent deploy may be writing a new state meanwhile
                again = self._read_state()
                if again is not None and again.get("pid") == state["pid"]:
                    self._forget(state)
            return None
        return _status_from_state(state)

    def ready(self, status: EndpointStatus | None = None, timeout: float = 2.0) -> bool:
        """Both the server and the model answer their v2 readiness routes."""
        status = status or self.status()
        if status is None:
            return False
        return _is_ready(status.url, status.model_name, timeout)

    # deploy -------------------------------------------------------------------------------

    def deploy(
        self, model_dir: Path, version: str, digest: str, timeout: float = READY_TIMEOUT_SECONDS
    ) -> EndpointStatus:
        """Serve the model in `model_dir`; a no-op when that exact model is already served and ready."""
        if not self.env.serving:
            raise ServingError(f"{self.env.name} serves no model (serving: false in config/environments.yaml)")
        model_dir = Path(model_dir).resolve()
        if not (model_dir / MODEL_FILE).is_file():
            raise ServingError(f"{model_dir} holds no {MODEL_FILE}; expected a model directory saved by train")
        actual = directory_digest(model_dir)
        if actual != digest:  # never serve a model under another model's name
            raise ServingError(f"{self.env.name}: {model_dir} has digest {actual}, not the {digest} to deploy")
        with _locked(self.dir):  # one deploy or stop per environment at a time
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
        with _locked(self.dir):
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
        extra = {"digest": digest}
        model_settings = {
            "name": self.model_name,
            "implementation": SKLEARN_RUNTIME,
            "platform": "sklearn",
            "versions": [version],
            "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, -1]}],
            "parameters": {"uri": str(model_dir / MODEL_FILE), "version": version, "extra": extra},
        }
        atomic_write_text(server_dir / "settings.json", json.dumps(settings, indent=2) + "\n")
        # In a folder named after the model, where MLServer expects it (else it logs a warning).
        model_folder = server_dir / self.model_name
        atomic_write_text(model_folder / "model-settings.json", json.dumps(model_settings, indent=2) + "\n")

    def _wait_ready(self, process: subprocess.Popen, url: str, timeout: float) -> str | None:
        """None once ready; otherwise why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                return f"the server exited with code {code}"
            if _is_ready(url, self.model_name, timeout=1.0):
                return None
            time.sleep(0.05)
        return f"not ready after {timeout:.0f}s"

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
def _locked(folder: Path):
    """An exclusive lock on an environment's serving folder, across processes and threads
    (re-entrant within a thread: deploy calls status, which may clean up under the lock)."""
    held = _HELD.__dict__.setdefault("folders", set())
    key = str(folder)
    if key in held:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mlserver_executable() -> str:
    beside = Path(sys.executable).parent / "mlserver"
    found = str(beside) if beside.is_file() else shutil.which("mlserver")
    if not found:
        raise ServingError("mlserver is not installed: install the serve extra (pip install -e '.[serve]')")
    return found


def _server_environment() -> dict[str, str]:
    env = dict(os.environ)
    # MLSERVER_* variables would override the settings files; the files are the whole truth here.
    for key in [k for k in env if k.startswith(("MLSERVER_", "MLSERVER_MODEL_"))]:
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
    if process is not None:
        if process.poll() is None:
            return False
        _CHILDREN.pop(pid, None)
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        return False
    return done == pid


def _alive(pid: int, marker: str) -> bool:
    """pid is a live MLServer started for `marker` (its settings folder), not a reused pid."""
    if not isinstance(pid, int) or pid <= 0 or _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now holds this pid
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return marker.encode() in proc.joinpath("cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
    return True


def _pids_serving(folder: Path) -> list[int]:
    """Processes whose command line names this settings folder (Linux /proc; [] elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = entry.joinpath("cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(folder).encode() in argv and _alive(int(entry.name), str(folder)):
                found.append(int(entry.name))
    return found


def _terminate(pid: int, marker: str) -> None:
    """SIGTERM the server's process group, then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # start_new_session made the server its group leader
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, marker):
                return
            time.sleep(0.05)


# --- HTTP ---------------------------------------------------------------------------------


def _get(url: str, timeout: float):
    import requests

    return requests.get(url, timeout=timeout)


def _is_ready(url: str, model_name: str, timeout: float) -> bool:
    import requests

    try:
        return (
            _get(f"{url}/v2/health/ready", timeout).status_code == 200
            and _get(f"{url}/v2/models/{model_name}/ready", timeout).status_code == 200
        )
    except requests.RequestException:
        return False


def inference_request(rows: list[list[float]], outputs: list[str] | None = None) -> dict[str, Any]:
    """An Open Inference Protocol v2 request: one FP64 tensor of shape [rows, features]."""
    if not rows or not all(isinstance(row, (list, tuple)) and row for row in rows):
        raise ServingError("rows must be a non-empty list of non-empty feature lists")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise ServingError(f"every row must have {width} features, like the first one")
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": [len(rows), width],
                "datatype": "FP64",
                "data": [float(value) for row in rows for value in row],
            }
        ]
    }
    if outputs:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


def _unflatten(data: list, shape: list[int]) -> list:
    """Reshape a v2 tensor's flat data; a column ([n, 1]) becomes a plain list of n values."""
    if len(shape) == 2 and shape[1] == 1:
        return list(data)
    if len(shape) == 2 and shape[1] > 0:
        return [list(data[i : i + shape[1]]) for i in range(0, len(data), shape[1])]
    return list(data)


def infer_response(
    url: str,
    model_name: str,
    rows: list[list[float]],
    timeout: float = 10,
    outputs: list[str] | None = None,
    session=None,
) -> dict[str, Any]:
    """POST /v2/models/<name>/infer and return the decoded v2 response."""
    import requests

    body = inference_request(rows, outputs)
    endpoint = f"{url.rstrip('/')}/v2/models/{model_name}/infer"
    try:
        response = (session or requests).post(endpoint, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise ServingError(f"{endpoint} is unreachable: {exc.__class__.__name__}") from None
    if response.status_code != 200:
        raise ServingError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise ServingError(f"{endpoint} answered with a body that is not JSON: {response.text[:200]}") from None


def infer(url: str, model_name: str, rows: list[list[float]], timeout: float = 10, output: str | None = None) -> list:
    """Predictions for `rows` (one per row); `output="predict_proba"` for class probabilities."""
    response = infer_response(url, model_name, rows, timeout, [output] if output else None)
    try:
        tensor = response["outputs"][0]
        return _unflatten(tensor["data"], tensor["shape"])
    except (KeyError, IndexError, TypeError):
        raise ServingError(f"{url}: the response holds no output tensor: {json.dumps(response)[:200]}") from None


# --- environment-level operations -----------------------------------------------------------


def _require_local_serving(cfg: Config, env_name: str) -> Environment:
    env = cfg.env(env_name)
    if not env.serving:
        raise ServingError(f"{env.name} serves no model (serving: false in config/environments.yaml)")
    if env.backend != "local":
        raise ServingError(
            f"{env.name} uses the cluster backend: its endpoint is the KServe InferenceService synced from "
            f"{env.overlay} ({env.cluster.endpoint_url})"
        )
    return env


def deploy_from_overlay(cfg: Config, env_name: str) -> EndpointStatus:
    """Serve exactly the model the overlay's model.yaml names, after verifying it in the env's store."""
    env = _require_local_serving(cfg, env_name)
    overlay = cfg.root / env.overlay
    ref = read_model_ref(overlay)
    if ref.is_empty:
        raise ServingError(
            f"{env.overlay}/model.yaml declares no model yet (version: none); register and promote one first"
        )
    store = ArtifactStore(env)
    store.verify(ref.storage_uri, ref.digest)  # never switch to a missing or mismatched model
    return LocalEndpoint(env, ref.name).deploy(store.local_path(ref.storage_uri), ref.version, ref.digest)


def endpoint(cfg: Config, env_name: str) -> LocalEndpoint:
    return LocalEndpoint(cfg.env(env_name), cfg.model_name)


def endpoints(cfg: Config) -> dict[str, EndpointStatus | None]:
    """The endpoint status of every environment (None: not running)."""
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
    serves_overlay: bool = True
    failures: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = list(self.failures)
        return data

    def rows(self) -> list[dict[str, str]]:
        """One row per check, for `cli.table`."""

        def mark(ok: bool) -> str:
            return "pass" if ok else "FAIL"

        latency_ok = self.p95_ms <= self.max_latency_ms
        return [
            {"check": "ready (/v2/health/ready, model ready)", "result": mark(self.ready), "detail": self.url},
            {"check": "serves the overlay's model.yaml", "result": mark(self.serves_overlay), "detail": self.digest},
            {
                "check": "metadata route",
                "result": mark(self.metadata_ok),
                "detail": f"{self.model_name} v{self.version}",
            },
            {"check": "response schema (v2)", "result": mark(self.schema_ok), "detail": ""},
            {
                "check": "predictions = offline model",
                "result": mark(self.predictions_match),
                "detail": f"{self.samples} test rows",
            },
            {
                "check": "p95 latency",
                "result": mark(latency_ok and self.samples > 0),
                "detail": f"{self.p95_ms:.1f} ms (max {self.max_latency_ms:.0f} ms)",
            },
        ]


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def sample_test_rows(samples: int) -> list[list[float]]:
    """Evenly spaced rows of the feature table's test split (the same table the pipeline builds)."""
    from .components.features import SPLIT, build_features, feature_columns, load_raw

    frame = build_features(load_raw())
    test = frame[frame[SPLIT] == "test"]
    if samples < 1:
        raise ServingError(f"samples is {samples}; expected at least 1")
    step = max(1, len(test) // samples)
    picked = test.iloc[::step].head(samples)
    return picked[feature_columns(frame)].to_numpy(dtype=float).tolist()


def smoke(cfg: Config, env_name: str, samples: int = 20) -> SmokeReport:
    """Check the running endpoint: readiness, metadata, response schema, latency, offline parity."""
    import numpy as np
    import requests

    from .components.train import load_model

    env = _require_local_serving(cfg, env_name)
    status = _status_any_model(env)
    if status is None:
        raise ServingError(f"no {env.name} endpoint is running; start it with `make serve ENV={env.name}`")
    failures: list[str] = []
    max_latency = float(env.gates.get("max_latency_ms", DEFAULT_MAX_LATENCY_MS))
    name, url = status.model_name, status.url

    ready = _is_ready(url, name, timeout=5.0)
    if not ready:
        failures.append(f"{url} is not ready")

    ref = read_model_ref(cfg.root / env.overlay)
    serves_overlay = not ref.is_empty and ref.digest == status.digest and ref.version == status.version
    if not serves_overlay:
        failures.append(
            f"the endpoint serves version {status.version} ({status.digest}) but {env.overlay}/model.yaml names "
            f"version {ref.version} ({ref.digest})"
        )

    metadata_ok = False
    try:
        meta = _get(f"{url}/v2/models/{name}", 5.0)
        body = meta.json() if meta.status_code == 200 else {}
        metadata_ok = body.get("name") == name and status.version in body.get("versions", [])
        if not metadata_ok:
            failures.append(f"metadata route answered {meta.status_code} without {name} v{status.version}")
    except (requests.RequestException, ValueError) as exc:
        failures.append(f"metadata route failed: {exc.__class__.__name__}")

    rows = sample_test_rows(samples)
    schema_ok, predictions_match, latencies = False, False, []
    try:
        with requests.Session() as session:
            # Latency: one request per row, as a client would send them.
            served: list = []
            for row in rows:
                began = time.perf_counter()
                response = infer_response(url, name, [row], session=session)
                latencies.append((time.perf_counter() - began) * 1000)
                served.append(response)
            batch = infer_response(url, name, rows, outputs=[PREDICT_OUTPUT, PROBA_OUTPUT], session=session)
        schema_problem = _schema_problem(served[0], name, status.version, 1) or _schema_problem(
            batch, name, status.version, len(rows), outputs=(PREDICT_OUTPUT, PROBA_OUTPUT)
        )
        schema_ok = schema_problem is None
        if schema_problem:
            failures.append(f"response schema: {schema_problem}")
        else:
            model_dir = Path(status.model_dir)
            if directory_digest(model_dir) != status.digest:
                failures.append(f"{model_dir} no longer has digest {status.digest}")
            else:
                model = load_model(model_dir)
                features = np.asarray(rows, dtype=float)
                offline_labels = model.predict(features).tolist()
                offline_proba = model.predict_proba(features)
                single = [r["outputs"][0]["data"][0] for r in served]
                by_name = {o["name"]: o for o in batch["outputs"]}
                batch_labels = list(by_name[PREDICT_OUTPUT]["data"])
                batch_proba = np.asarray(by_name[PROBA_OUTPUT]["data"], dtype=float).reshape(offline_proba.shape)
                predictions_match = (
                    single == offline_labels
                    and batch_labels == offline_labels
                    and bool(np.allclose(batch_proba, offline_proba, rtol=0, atol=PROBA_TOLERANCE))
                )
                if not predictions_match:
                    failures.append("the endpoint's predictions differ from the model file's offline predictions")
    except ServingError as exc:
        failures.append(str(exc))

    p95 = round(_p95(latencies), 3)
    if latencies and p95 > max_latency:
        failures.append(f"p95 latency {p95:.1f} ms exceeds max_latency_ms {max_latency:.0f}")
    return SmokeReport(
        ready=ready,
        metadata_ok=metadata_ok,
        schema_ok=schema_ok,
        predictions_match=predictions_match,
        samples=len(latencies),
        p95_ms=p95,
        max_latency_ms=max_latency,
        passed=not failures,
        env=env.name,
        url=url,
        model_name=name,
        version=status.version,
        digest=status.digest,
        serves_overlay=serves_overlay,
        failures=tuple(failures),
    )


def _schema_problem(
    response: dict, name: str, version: str, rows: int, outputs: tuple[str, ...] = (PREDICT_OUTPUT,)
) -> str | None:
    """None when the response is a v2 response for `name`/`version` with one tensor per output."""
    if response.get("model_name") != name:
        return f"model_name is {response.get('model_name')!r}, expected {name!r}"
    if str(response.get("model_version")) != version:
        return f"model_version is {response.get('model_version')!r}, expected {version!r}"
    tensors = response.get("outputs")
    if not isinstance(tensors, list) or [t.get("name") for t in tensors] != list(outputs):
        return f"outputs are {[t.get('name') for t in tensors or []]}, expected {list(outputs)}"
    for tensor in tensors:
        shape, data = tensor.get("shape"), tensor.get("data")
        if tensor.get("datatype") not in NUMERIC_DATATYPES:
            return f"{tensor['name']} has datatype {tensor.get('datatype')!r}"
        if not isinstance(shape, list) or not shape or shape[0] != rows or not isinstance(data, list):
            return f"{tensor['name']} has shape {shape}, expected [{rows}, ...]"
        if len(data) != math.prod(shape):
            return f"{tensor['name']} holds {len(data)} values for shape {shape}"
    return None
