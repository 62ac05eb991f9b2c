"""Serving commands: the local endpoints (serve, smoke, stop, endpoints)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._app import EnvOptional, EnvRequired, JsonFlag, command, load_config

STATUS_COLUMNS = ["env", "state", "url", "model", "version", "digest", "pid", "startup"]


def _status_row(env: str, status, ready: bool | None = None) -> dict:
    if status is None:
        return {"env": env, "state": "stopped"}
    state = "serving" if ready in (None, True) else "not ready"
    return {
        "env": env,
        "state": state,
        "url": status.url,
        "model": status.model_name,
        "version": status.version,
        "digest": status.digest[:19],
        "pid": status.pid,
        "startup": f"{status.startup_seconds:.1f}s",
    }


@command("serve", "serve the model an overlay's release names, on 127.0.0.1 (verified first)")
def serve_cmd(env: EnvRequired) -> int:
    from .. import serving
    from ..console import progress, table

    cfg = load_config()
    progress(f"{env}: serving the model named by {cfg.env(env).overlay}")
    status = serving.deploy_from_overlay(cfg, env)
    print(table([_status_row(env, status)], STATUS_COLUMNS))
    return 0


@command("smoke", "smoke-test an endpoint: readiness, schema, latency, offline parity")
def smoke_cmd(
    env: EnvRequired,
    samples: Annotated[int, typer.Option(min=1, help="test rows to send")] = 20,
    url: Annotated[
        str | None, typer.Option(help="cluster: the URL `sync` reported (default: cluster.endpoint_url)")
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    from .. import serving
    from ..console import progress, table

    cfg = load_config()
    progress(f"{env}: smoke-testing the endpoint with {samples} test rows")
    report = serving.smoke(cfg, env, samples=samples, url=url or None)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(table(report.rows(), ["check", "result", "detail"]))
        for failure in report.failures:
            print(f"  ✗ {failure}")
        print(f"smoke test {'passed' if report.passed else 'FAILED'} for {env}")
    return 0 if report.passed else 1


@command("stop", "stop the local endpoint of one environment (default: all)")
def stop_cmd(env: EnvOptional = None) -> int:
    from .. import serving

    cfg = load_config()
    if env:
        stopped = [env] if serving.LocalEndpoint(cfg.env(env), cfg.model_name).stop() else []
    else:
        stopped = serving.stop_all(cfg)
    print(f"stopped: {', '.join(stopped)}" if stopped else "no endpoint was running")
    return 0


@command("endpoints", "status of every environment's endpoint")
def endpoints_cmd() -> int:
    from .. import serving
    from ..console import table

    cfg = load_config()
    rows = []
    for env, status in serving.endpoints(cfg).items():
        if not cfg.env(env).serving:
            rows.append({"env": env, "state": "no endpoint (serving: false)"})
            continue
        ready = serving.LocalEndpoint(cfg.env(env), cfg.model_name).ready(status) if status else None
        rows.append(_status_row(env, status, ready))
    print(table(rows, STATUS_COLUMNS))
    return 0
