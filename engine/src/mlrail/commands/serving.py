"""CLI commands: serving — the local endpoints (serve, smoke, stop, endpoints)."""

from __future__ import annotations

import argparse
import json

from ..config import ENVIRONMENTS, Config

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


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from .. import serving
    from ..console import progress, table

    progress(f"{args.env}: serving the model named by {cfg.env(args.env).overlay}/model.yaml")
    status = serving.deploy_from_overlay(cfg, args.env)
    print(table([_status_row(args.env, status)], STATUS_COLUMNS))
    return 0


def cmd_smoke(args: argparse.Namespace, cfg: Config) -> int:
    from .. import serving
    from ..console import progress, table

    progress(f"{args.env}: smoke-testing the endpoint with {args.samples} test rows")
    report = serving.smoke(cfg, args.env, samples=args.samples)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(table(report.rows(), ["check", "result", "detail"]))
        for failure in report.failures:
            print(f"  ✗ {failure}")
        print(f"smoke test {'passed' if report.passed else 'FAILED'} for {args.env}")
    return 0 if report.passed else 1


def cmd_stop(args: argparse.Namespace, cfg: Config) -> int:
    from .. import serving

    if args.env:
        stopped = [args.env] if serving.LocalEndpoint(cfg.env(args.env), cfg.model_name).stop() else []
    else:
        stopped = serving.stop_all(cfg)
    print(f"stopped: {', '.join(stopped)}" if stopped else "no endpoint was running")
    return 0


def cmd_endpoints(args: argparse.Namespace, cfg: Config) -> int:
    from .. import serving
    from ..console import table

    rows = []
    for env, status in serving.endpoints(cfg).items():
        if not cfg.env(env).serving:
            rows.append({"env": env, "state": "no endpoint (serving: false)"})
            continue
        ready = serving.LocalEndpoint(cfg.env(env), cfg.model_name).ready(status) if status else None
        rows.append(_status_row(env, status, ready))
    print(table(rows, STATUS_COLUMNS))
    return 0


def register(add) -> None:
    """Add this area's subcommands with `add(name, handler, help)`."""
    sub = add("serve", cmd_serve, "serve the model an overlay's model.yaml names, on 127.0.0.1 (verified first)")
    sub.add_argument("--env", required=True, choices=ENVIRONMENTS)

    sub = add("smoke", cmd_smoke, "smoke-test an endpoint: readiness, schema, latency, offline parity")
    sub.add_argument("--env", required=True, choices=ENVIRONMENTS)
    sub.add_argument("--samples", type=int, default=20, help="test rows to send (default: %(default)s)")
    sub.add_argument("--json", action="store_true", help="print the report as JSON")

    sub = add("stop", cmd_stop, "stop the local endpoint of one environment (default: all)")
    sub.add_argument("--env", choices=ENVIRONMENTS)

    add("endpoints", cmd_endpoints, "status of every environment's endpoint")
