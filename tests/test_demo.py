"""`make demo` (scripts/demo.py): the whole life of a model for both promotion patterns.

The end-to-end run is deep (a few minutes: two generated projects bootstrapped, trained,
served, promoted and rolled back); the other tests check the demo's own safety rules fast.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from template_support import ROOT, generated_repo_env

DEMO_TIMEOUT = 900  # seconds; the target is 2 minutes warm on 2 cores, this only stops a hang
PRODUCTION_RELEASE = "deploy/overlays/production/release.yaml"


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def running_servers_under(folder: Path) -> list[str]:
    """Command lines of live processes that name a path inside `folder` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in argv and "mlserver" in argv:
            found.append(argv)
    return found


def test_demo_refuses_to_take_over_a_folder_it_did_not_make(tmp_path):
    demo = load_demo()
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(demo.DemoError, match="was not made by the demo"):
        demo.prepare_out(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert demo.main(["--out", str(tmp_path), "--pattern", "transit"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_regenerating_replaces_the_project_and_keeps_its_venv(tmp_path, cookiecutter_config, monkeypatch):
    monkeypatch.setenv("COOKIECUTTER_CONFIG", str(cookiecutter_config))
    demo = load_demo()
    out = tmp_path / "demo"
    demo.prepare_out(out)
    story = demo.Story("retrain", out, out / "retrain.log")
    first = demo.generate(story)
    (first / ".venv").mkdir()
    (first / ".venv" / "marker").write_text("installed")
    (first / "stale.txt").write_text("from the previous run")
    second = demo.generate(story)
    assert second == first and not (second / "stale.txt").exists()
    assert (second / ".venv" / "marker").read_text() == "installed"
    assert (second / "docs" / "promotion-retrain.md").exists()
    assert demo.prepare_out(out) is None  # a folder the demo made is reused


@pytest.mark.deep
@pytest.mark.xdist_group("deep-demo")
def test_make_demo_promotes_serves_and_rolls_back_both_patterns(tmp_path):
    out = tmp_path / "demo"
    env = generated_repo_env()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    tail = "\n".join(result.stdout.splitlines()[-60:])
    assert result.returncode == 0, f"the demo failed:\n{tail}"
    assert running_servers_under(out) == [], "the demo left model servers running"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True and set(summary["patterns"]) == {"transit", "retrain"}
    for pattern, story in summary["patterns"].items():
        assert all(story["checks"].values()), (pattern, story["checks"])
        production, staging = story["production"], story["staging"]
        # production serves the promoted model: registry, release and endpoint agree on the digest
        assert production["served_digest"] == production["digest"] == story["prediction"]["served_digest"]
        assert production["digest"].startswith("sha256:") and production["name"] == staging["name"]
        assert staging["metrics"]["accuracy"] > 0.9 and production["metrics"]["roc_auc"] > 0.95
        assert story["prediction"]["rows"] >= 1 and story["prediction"]["predictions"]
        assert story["rollback"]["production_served_digest"] == production["digest"]
        for phase in ("generate", "bootstrap", "check", "sandbox", "staging", "production", "rollback"):
            assert story["timings"][phase] >= 0
        assert story["overhead"]["ratio"] > 1.0
    transit, retrain = summary["patterns"]["transit"], summary["patterns"]["retrain"]
    assert transit["production"]["digest"] == transit["staging"]["digest"]  # the very artifact staging validated
    # a promotion PR changes production's release (and staging's record of what it validated)
    for story in (transit, retrain):
        assert PRODUCTION_RELEASE in story["promotion_pr"]["files"]
        assert set(story["promotion_pr"]["files"]) <= {PRODUCTION_RELEASE, "deploy/overlays/staging/release.yaml"}
    assert retrain["deployment_pr"]["files"] == [PRODUCTION_RELEASE]
    assert retrain["production"]["env"] == "production"  # trained in production, not copied
