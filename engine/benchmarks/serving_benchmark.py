"""Benchmark the local serving and registry backends; prints times and ratios in one run.

- MLServer start-up (process start -> model ready), a blue/green redeploy, a no-op redeploy,
  and where the start-up goes (imports, model load, servers), from MLServer's own log
- `mlflow server` start-up, with a new database (migrations) and an already migrated one
- registry latency per call, SQLite file vs `mlflow server` on 127.0.0.1, and their ratio
- inference latency of one row of the model's input example (p50 / p95), MLServer's codecs

Run: .venv/bin/python benchmarks/serving_benchmark.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from example import ROOT  # noqa: E402 - generates the example project and puts its src/ on sys.path
from mlrail import config, mlmodel, serving  # noqa: E402
from mlrail.artifacts import ArtifactStore  # noqa: E402
from mlrail.config import ClusterSettings, Environment  # noqa: E402
from mlrail.registry import Registry, lineage_tags  # noqa: E402
from mlrail.release import ModelRef, portable_uri, read_release, source_of, write_release  # noqa: E402

BIN = Path(sys.executable).parent
REGISTRY_MLMODEL = """\
flavors: {python_function: {loader_module: mlflow.sklearn, model_path: model.pkl}}
saved_input_example_info: {artifact_path: input_example.json, type: dataframe, pandas_orient: split}
signature: {inputs: '[{"type": "double", "name": "x", "required": true}]'}
"""


def declare(cfg, env_name: str, stored, version: str) -> None:
    overlay = cfg.root / cfg.env(env_name).overlay
    source = source_of(env_name, cfg.model_name, version)
    model = ModelRef(cfg.model_name, version, stored.digest, portable_uri(stored.uri, cfg.local_root), source)
    write_release(overlay, read_release(overlay).with_model(model))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(function, *args, **kwargs) -> tuple[float, object]:
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - began, result


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def startup_phases(log: Path, began: float, ready: float) -> tuple[float, float, float]:
    """(imports, model load, rest) of one MLServer start, from its log's millisecond timestamps."""
    stamps = []
    for line in log.read_text().splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        stamps.append((stamp, line))
    first = stamps[0][0]
    loaded = next(stamp for stamp, line in stamps if "Loaded model" in line)
    return first - began, loaded - first, ready - loaded


# --- MLServer -----------------------------------------------------------------------------


def bench_mlserver(project: Path, repeat: int) -> list[list]:
    from churn_classifier.components.features import build_features, load_raw
    from churn_classifier.components.train import save_model, train_model

    cfg = config.load(project)
    staging = cfg.env("staging")
    frame = build_features(load_raw())
    stored = []
    for c in (1.0, 0.5):
        save_model(train_model(frame, c=c), project / f"model-{c}", frame)
        stored.append(ArtifactStore(staging).put(project / f"model-{c}"))
    declare(cfg, "staging", stored[0], "1")
    endpoint = serving.LocalEndpoint(staging, cfg.model_name)
    starts, phases = [], []
    try:
        for _ in range(repeat):
            endpoint.stop()
            began = time.time()
            seconds, status = timed(serving.deploy_from_overlay, cfg, "staging")
            starts.append(seconds)
            phases.append(startup_phases(endpoint.log_path, began, began + seconds))
        noop, _ = timed(serving.deploy_from_overlay, cfg, "staging")
        declare(cfg, "staging", stored[1], "2")
        switch, status = timed(serving.deploy_from_overlay, cfg, "staging")
        latencies = []
        row = serving.example_rows(mlmodel.input_example_frame(status.model_dir))[0]
        with requests.Session() as session:
            for _ in range(200):
                began = time.perf_counter()
                serving.infer(status.url, cfg.model_name, row, session=session)
                latencies.append((time.perf_counter() - began) * 1000)
        smoke_seconds, report = timed(serving.smoke, cfg, "staging")
    finally:
        serving.stop_all(cfg)
    latencies.sort()
    start = median(starts)
    imports, load, ready = (median([p[i] for p in phases]) for i in range(3))
    return [
        ["MLServer start-up (deploy -> ready), median", f"{start:.2f} s", f"{min(starts):.2f} - {max(starts):.2f}"],
        ["  process start + imports (to its first log line)", f"{imports:.2f} s", f"{100 * imports / start:.0f}%"],
        ["  model load (to 'Loaded model')", f"{load:.2f} s", f"{100 * load / start:.0f}%"],
        ["  servers up + readiness seen", f"{ready:.2f} s", f"{100 * ready / start:.0f}%"],
        ["redeploy, same model (no restart)", f"{noop * 1000:.1f} ms", f"ratio to start {noop / start:.3f}"],
        ["redeploy, new model (blue/green)", f"{switch:.2f} s", f"ratio to start {switch / start:.2f}"],
        ["infer 1 row, p50 / p95", f"{latencies[100]:.2f} / {latencies[190]:.2f} ms", "keep-alive session"],
        ["smoke (20 requests + checks)", f"{smoke_seconds:.2f} s", f"passed={report.passed}"],
    ]


# --- MLflow -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow(folder: Path, database: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    began = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database}"]
        + ["--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError("mlflow server exited")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url, time.perf_counter() - began
        except requests.RequestException:
            time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def registry_calls(env: Environment, folder: Path, repeat: int) -> dict[str, float]:
    """Median seconds per registry operation for one backend."""
    name = f"bench-{uuid.uuid4().hex[:6]}"
    opened, registry = timed(Registry, env, name)
    samples: dict[str, list[float]] = {"open (existing registry)": []}
    store = ArtifactStore(env)
    for index in range(repeat):
        model = folder / f"m{index}"
        model.mkdir()
        (model / "model.pkl").write_bytes(os.urandom(4096))
        (model / "MLmodel").write_text(REGISTRY_MLMODEL)
        stored = store.put(model)
        lineage = lineage_tags(git_commit="abc", metrics={"accuracy": 0.9, "roc_auc": 0.95})
        for label, function, args in (
            ("register (new version)", registry.register, (stored, lineage)),
            ("register (existing: idempotent)", registry.register, (stored, lineage)),
            ("find_by_digest", registry.find_by_digest, (stored.digest,)),
            ("get", registry.get, (str(index + 1),)),
            ("set_alias", registry.set_alias, ("champion", str(index + 1))),
            ("alias", registry.alias, ("champion",)),
            ("versions", registry.versions, ()),
        ):
            seconds, _ = timed(function, *args)
            samples.setdefault(label, []).append(seconds)
        seconds, _ = timed(Registry, env, name)
        samples["open (existing registry)"].append(seconds)
    result = {label: median(values) for label, values in samples.items()}
    result["first open"] = opened
    return result


def bench_registry(project: Path, repeat: int) -> tuple[list[list], list[list]]:
    cfg = config.load(project)
    sqlite_env = cfg.env("sandbox")
    Registry(sqlite_env, "warm-up")  # imports mlflow and creates the database outside the timings
    created = min(timed(Registry, cfg.env(name), "x")[0] for name in ("staging", "production"))
    (project / "sqlite-models").mkdir()
    sqlite = registry_calls(sqlite_env, project / "sqlite-models", repeat)
    server_folder = project / "mlflow-server"
    server_folder.mkdir()
    fresh_process, url, fresh = start_mlflow(server_folder, server_folder / "fresh.db")
    stop_process(fresh_process)
    shutil.copyfile(sqlite_env.local_dir / "registry.db", server_folder / "migrated.db")
    process, url, migrated = start_mlflow(server_folder, server_folder / "migrated.db")
    try:
        server_env = Environment(
            **{
                **sqlite_env.__dict__,
                "backend": "cluster",
                "cluster": ClusterSettings(
                    kfp_endpoint="http://127.0.0.1:1",
                    registry_uri=url,
                    artifact_root=(project / "server-bucket").as_uri(),
                    endpoint_url="http://127.0.0.1:1",
                ),
            }
        )
        (project / "server-models").mkdir()
        server = registry_calls(server_env, project / "server-models", repeat)
    finally:
        stop_process(process)
    startup = [
        ["mlflow server start-up, new database (runs migrations)", f"{fresh:.2f} s"],
        ["mlflow server start-up, migrated database", f"{migrated:.2f} s"],
        ["new SQLite registry (migrations, in process)", f"{created:.2f} s"],
    ]
    calls = [
        [
            label,
            f"{sqlite[label] * 1000:.1f} ms",
            f"{server[label] * 1000:.1f} ms",
            f"{server[label] / sqlite[label]:.1f}x",
        ]
        for label in sqlite
        if label != "first open"
    ]
    return startup, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["MLOPS_BACKEND"] = "local"
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as temp:
        project = Path(temp)
        for folder in ("config", "deploy"):
            shutil.copytree(ROOT / folder, project / folder)
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
        print(table(bench_mlserver(project, args.repeat), ["MLServer (local endpoint)", "time", "note"]))
        startup, calls = bench_registry(project, args.repeat)
        print()
        print(table(startup, ["MLflow", "time"]))
        print()
        print(table(calls, ["registry call (median)", "SQLite", "mlflow server", "server / SQLite"]))
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
