"""Faults a hostile or careless user meets (issue 11, findings 3, 4, 6 and 7): concurrent staging
runs, a deleted registry, and broken local state. Each is one `error:` line with a documented exit
code (docs/cli.md), never a traceback; docs/faults.md lists them.

Real SQLite registries, stores and git repositories under a temporary folder; no training."""

import errno
import re
import sqlite3
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from filelock import FileLock

import lifecycle_support as support
from mlrail import cli, config, gitops, locking, promotion
from mlrail.registry import Registry, RegistryError
from test_provenance import commit_release, git, register, transit_release

blank_registry_db = support.blank_registry_db
lifecycle = support.lifecycle


def error_lines(err: str) -> list[str]:
    """stderr without progress lines: what a failing command says."""
    return [line for line in err.splitlines() if not line.startswith("» ")]


def one_error(capsys) -> str:
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: ") and "Traceback" not in line
    return line


def set_lock_wait(cfg, seconds):
    path = cfg.root / "config" / "environments.yaml"
    path.write_text(re.sub(r"(?m)^  lock_s: .*$", f"  lock_s: {seconds}", path.read_text()))
    git(cfg.root, "commit", "--quiet", "-am", f"lock_s {seconds}")
    return config.load(cfg.root)


# --- finding 3: one run per environment, newer by commit order --------------------------------


def test_a_concurrent_staging_run_is_refused_within_the_configured_wait(lifecycle, capsys):
    cfg = set_lock_wait(lifecycle("transit"), 1)
    holder = FileLock(cfg.env("staging").local_dir / locking.LOCK_FILE)
    holder.acquire()
    try:
        started = time.monotonic()
        assert cli.main(["staging"]) == 5
        assert time.monotonic() - started < 30
        line = one_error(capsys)
        assert "staging is busy:" in line and "did not finish within 1s" in line and "timeouts.lock_s" in line
        assert Registry(cfg.env("staging"), cfg.model_name).versions() == []  # nothing ran
    finally:
        holder.release()


def test_the_lock_waits_for_the_holder_and_is_reentrant(lifecycle):
    cfg = lifecycle("transit")
    env = cfg.env("staging")
    holder = FileLock(env.local_dir / locking.LOCK_FILE, thread_local=False)
    holder.acquire()
    threading.Timer(1.0, holder.release).start()
    started = time.monotonic()
    with locking.environment_lock(env, "test", wait_s=20):
        assert time.monotonic() - started >= 0.9  # waited for the holder, then went on
        with locking.environment_lock(env, "nested", wait_s=0):  # the same thread: no deadlock
            pass
    with locking.environment_lock(env, "again", wait_s=0):  # released on exit
        pass


def test_an_older_candidate_never_closes_a_newer_ones_promotion_pr(lifecycle, tmp_path):
    cfg = lifecycle("transit")
    older_commit = gitops.head_commit(cfg.root)
    (cfg.root / "NOTES.md").write_text("a newer commit\n")
    git(cfg.root, "add", "NOTES.md")
    git(cfg.root, "commit", "--quiet", "-m", "newer")
    newer_commit = gitops.head_commit(cfg.root)
    staging = Registry(cfg.env("staging"), cfg.model_name)
    pulls = gitops.pull_requests(cfg)

    newer = register(cfg, "staging", tmp_path, git_commit=newer_commit)
    staging.set_alias("challenger", newer.version)
    first, _ = promotion.open_promotion(cfg)

    # the run that started earlier, on the older commit, finishes last (today: it closed #1)
    older = register(cfg, "staging", tmp_path, git_commit=older_commit)
    staging.set_alias("challenger", older.version)
    pr, note = promotion.open_promotion(cfg)
    assert pr is None and "is older than the candidate PR #1 promotes" in note
    assert [(p.number, p.state) for p in pulls.list()] == [(1, "open")]
    assert staging.alias("challenger").version == newer.version  # the challenger is what the open PR promotes

    # the same commit (e.g. other parameters): the later run replaces; a newer commit supersedes
    same = register(cfg, "staging", tmp_path, git_commit=newer_commit)
    staging.set_alias("challenger", same.version)
    second, note = promotion.open_promotion(cfg)
    assert second.number == 2 and "closed superseded #1" in note
    assert [p.state for p in pulls.list()] == ["closed", "open"]


# --- finding 4: a registry is never recreated silently ---------------------------------------


def test_a_deleted_registry_where_the_store_holds_models_is_an_error(lifecycle, tmp_path, capsys):
    cfg = lifecycle("transit")
    register(cfg, "staging", tmp_path)
    database = cfg.env("staging").local_dir / "registry.db"
    database.unlink()
    with pytest.raises(
        RegistryError,
        match=r"registry .*registry.db is missing but the staging store .* holds 1 "
        r"model\(s\): restore .* `mlrail recreate-registry --env staging`",
    ):
        Registry(cfg.env("staging"), cfg.model_name)
    assert not database.exists()
    assert cli.main(["promote"]) == 1
    assert "is missing but the staging store" in one_error(capsys)
    assert not database.exists()  # still nothing created
    assert cli.main(["recreate-registry", "--env", "staging"]) == 0
    with sqlite3.connect(database) as connection:  # a new, empty registry (this process caches the old one)
        assert connection.execute("SELECT COUNT(*) FROM model_versions").fetchone() == (0,)
    assert cli.main(["recreate-registry", "--env", "staging"]) == 0
    assert "exists; nothing to do" in capsys.readouterr().out


def test_a_fresh_environment_still_creates_its_registry(lifecycle):
    cfg = lifecycle("transit")
    env = cfg.env("sandbox")
    (env.local_dir / "registry.db").unlink()
    assert Registry(env, cfg.model_name).versions() == []  # an empty store: first use creates it
    assert (env.local_dir / "registry.db").is_file()


def test_a_fresh_environment_may_store_its_first_model_before_its_registry_exists(lifecycle, tmp_path):
    # The flows store a model, then register it: in a new environment the store holds that first
    # model a moment before the registry is first opened, which must not read as a lost registry.
    cfg = lifecycle("transit")
    env = cfg.env("sandbox")
    database = env.local_dir / "registry.db"
    database.unlink()
    database.with_name("registry.db.created").unlink()  # this environment never had a registry
    mv = register(cfg, "sandbox", tmp_path)
    assert mv.version == "1" and database.is_file()


# --- finding 7: broken local state is one line, not a traceback -----------------------------


def test_a_locked_registry_database_is_one_line(lifecycle, tmp_path, capsys):
    cfg = lifecycle("transit")
    passed = register(cfg, "staging", tmp_path)
    commit_release(cfg, transit_release(cfg, passed))
    connection = sqlite3.connect(cfg.env("staging").local_dir / "registry.db", timeout=1)
    connection.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        started = time.monotonic()
        assert cli.main(["production"]) != 0
        assert time.monotonic() - started < 60
        line = one_error(capsys)
        assert "staging registry" in line and "locked" in line
    finally:
        connection.rollback()
        connection.close()


def test_a_pulls_record_that_is_a_folder_is_one_line(lifecycle, capsys):
    cfg = lifecycle("transit")
    (cfg.local_root / "pulls.json").mkdir(parents=True)
    assert cli.main(["prs"]) == 1
    assert "pulls.json is not a file" in one_error(capsys)


def test_a_file_where_a_folder_belongs_is_one_line(lifecycle, capsys):
    cfg = lifecycle("transit")
    local = cfg.env("staging").local_dir
    subprocess.run(["rm", "-rf", str(local)], check=True)
    local.write_text("not a folder\n")
    assert cli.main(["promote"]) == 1
    line = one_error(capsys)
    assert str(local) in line and "a file is where a folder belongs on that path; move the file away" in line


def test_a_read_only_local_root_is_one_line(lifecycle, monkeypatch, capsys):
    """Tests run as root, for whom file modes do not apply: the refusal the kernel gives a user
    on a read-only .mlops (EACCES) is injected where every state file is written."""
    cfg = lifecycle("transit")
    import mlrail.fsutil as fsutil

    models = cfg.root.parent / "models"
    models.mkdir()
    passed = register(cfg, "staging", models)
    Registry(cfg.env("staging"), cfg.model_name).set_alias("challenger", passed.version)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(cfg.local_root / "pulls.json"))

    monkeypatch.setattr(fsutil, "tempfile", SimpleNamespace(mkstemp=refuse))
    assert cli.main(["promote"]) == 1
    line = one_error(capsys)
    assert "cannot use" in line and "pulls.json: Permission denied" in line


def test_a_malformed_release_names_its_line(lifecycle, capsys):
    cfg = lifecycle("transit")
    path = cfg.root / support.PRODUCTION_RELEASE
    path.write_text(path.read_text().replace("data:\n", "data:\n bad\n", 1))
    git(cfg.root, "commit", "--quiet", "-am", "broken")
    assert cli.main(["production"]) == 4
    assert re.search(r"release.yaml at HEAD is not valid YAML \(line \d+\)", one_error(capsys))
