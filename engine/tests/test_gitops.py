import dataclasses
import subprocess

import pytest

from mlrail import config, gitops
from mlrail.gitops import GitOpsError, LocalPullRequests

MODEL = "deploy/overlays/production/model.yaml"


def run(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path):
    root = tmp_path / "project"
    (root / "deploy/overlays/production").mkdir(parents=True)
    (root / MODEL).write_text("version: none\n")
    (root / "README.md").write_text("hello\n")
    (root / ".gitignore").write_text(".mlops/\n")
    run(root, "init", "--quiet", "--initial-branch=main")
    run(root, "add", "--all")
    run(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "initial")
    return root


@pytest.fixture()
def pulls(repo):
    return LocalPullRequests(repo, repo / ".mlops")


def test_open_pushes_a_branch_without_touching_the_checkout(repo, pulls):
    pr = pulls.open_or_update("promote/a", "main", "Promote a", "body", {MODEL: "version: 1\n"})
    assert (pr.number, pr.state, pr.files) == (1, "open", [MODEL])
    assert (repo / MODEL).read_text() == "version: none\n"
    assert run(repo, "status", "--porcelain") == ""
    assert run(repo, "symbolic-ref", "--short", "HEAD") == "main"
    remote = repo / ".mlops/remote.git"
    assert run(repo, "remote", "get-url", "origin") == str(remote)
    assert run(remote, "show", f"refs/heads/promote/a:{MODEL}") == "version: 1"


def test_rerun_updates_the_same_pull_request(pulls):
    first = pulls.open_or_update("promote/a", "main", "Promote a", "one", {MODEL: "version: 1\n"})
    again = pulls.open_or_update("promote/a", "main", "Promote a", "two", {MODEL: "version: 1\n"})
    assert again.number == first.number and again.head == first.head  # same content: nothing pushed
    assert again.body == "two"
    changed = pulls.open_or_update("promote/a", "main", "Promote a", "two", {MODEL: "version: 2\n"})
    assert changed.number == first.number and changed.head != first.head
    assert [pr.number for pr in pulls.list()] == [1]


def test_merge_fast_forwards_local_main_and_is_idempotent(repo, pulls):
    pr = pulls.open_or_update("promote/a", "main", "Promote a", "body", {MODEL: "version: 1\n"})
    merged = pulls.merge(pr.number)
    assert merged.state == "merged"
    assert (repo / MODEL).read_text() == "version: 1\n"
    assert run(repo, "rev-parse", "HEAD") == run(repo / ".mlops/remote.git", "rev-parse", "main")
    assert pulls.merge(pr.number).state == "merged"
    assert pulls.find_open("promote/a") is None
    with pytest.raises(GitOpsError, match="already merged"):
        pulls.close(pr.number)


def test_merge_keeps_unrelated_edits_and_refuses_conflicting_ones(repo, pulls):
    (repo / "README.md").write_text("my edit\n")
    pr = pulls.open_or_update("promote/a", "main", "Promote a", "body", {MODEL: "version: 1\n"})
    (repo / MODEL).write_text("version: mine\n")
    with pytest.raises(GitOpsError, match="uncommitted changes that differ from pull request #1"):
        pulls.merge(pr.number)
    assert (repo / MODEL).read_text() == "version: mine\n"
    (repo / MODEL).write_text("version: 1\n")  # the same content the PR brings: fine
    pulls.merge(pr.number)
    assert (repo / "README.md").read_text() == "my edit\n"
    assert run(repo, "status", "--porcelain") == "M README.md"


def test_new_files_and_non_fast_forward_merges(repo, pulls):
    first = pulls.open_or_update("a", "main", "A", "", {"deploy/overlays/production/pipeline.yaml": "p: 1\n"})
    second = pulls.open_or_update("b", "main", "B", "", {MODEL: "version: 2\n"})
    (repo / "deploy/overlays/production/pipeline.yaml").write_text("p: 1\n")  # as a flow would leave it
    pulls.merge(first.number)
    pulls.merge(second.number)  # main moved: a real merge commit
    assert (repo / MODEL).read_text() == "version: 2\n"
    assert (repo / "deploy/overlays/production/pipeline.yaml").read_text() == "p: 1\n"
    assert len(run(repo, "log", "-1", "--format=%P").split()) == 2


def test_conflicting_pull_request_is_refused(pulls):
    first = pulls.open_or_update("a", "main", "A", "", {MODEL: "version: 1\n"})
    second = pulls.open_or_update("b", "main", "B", "", {MODEL: "version: 2\n"})
    pulls.merge(first.number)
    with pytest.raises(GitOpsError, match="conflicts with main"):
        pulls.merge(second.number)
    assert pulls.close(second.number).state == "closed"
    with pytest.raises(GitOpsError, match="is closed"):
        pulls.merge(second.number)


def test_merge_converges_after_a_crash_between_remote_and_record(repo, pulls, monkeypatch):
    pr = pulls.open_or_update("promote/a", "main", "Promote a", "body", {MODEL: "version: 1\n"})
    monkeypatch.setattr(LocalPullRequests, "_update", lambda self, pr: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        pulls.merge(pr.number)
    monkeypatch.undo()
    assert pulls.get(pr.number).state == "open"
    assert pulls.merge(pr.number).state == "merged"
    assert (repo / MODEL).read_text() == "version: 1\n"
    assert run(repo, "log", "--format=%s").splitlines() == ["Promote a", "initial"]


def test_bad_inputs_are_one_clear_error(repo, pulls, tmp_path):
    with pytest.raises(GitOpsError, match="does not exist"):
        pulls.get(7)
    with pytest.raises(GitOpsError, match="changes no file"):
        pulls.open_or_update("a", "main", "A", "", {})
    with pytest.raises(GitOpsError, match="would change nothing"):
        pulls.open_or_update("a", "main", "A", "", {MODEL: "version: none\n"})
    with pytest.raises(GitOpsError, match="not a git repository"):
        LocalPullRequests(tmp_path, tmp_path / ".mlops").list() or LocalPullRequests(
            tmp_path, tmp_path / ".mlops"
        ).open_or_update("a", "main", "A", "", {MODEL: "x"})


def test_backend_factory(project_copy, monkeypatch):
    cfg = config.load()
    assert isinstance(gitops.pull_requests(cfg), LocalPullRequests)
    assert gitops.backend_name(dataclasses.replace(cfg, pull_requests="github")) == "github"


def test_merge_checks_everything_before_it_publishes(repo, pulls):
    """Finding 6: a refused merge leaves the remote's main and the PR record as they were."""
    remote = repo / ".mlops/remote.git"
    pr = pulls.open_or_update("promote/a", "main", "Promote a", "body", {MODEL: "version: 1\n"})
    before = run(remote, "rev-parse", "main")
    (repo / MODEL).write_text("version: mine\n")  # an uncommitted, different reference
    with pytest.raises(GitOpsError, match=r"differ from pull request #1.*nothing was merged"):
        pulls.merge(pr.number)
    assert run(remote, "rev-parse", "main") == before and pulls.get(pr.number).state == "open"
    (repo / MODEL).write_text("version: none\n")

    def refuse(checked):
        assert checked.number == pr.number
        raise GitOpsError("refused by the check")

    with pytest.raises(GitOpsError, match="refused by the check"):
        pulls.merge(pr.number, check=refuse)
    assert run(remote, "rev-parse", "main") == before and pulls.get(pr.number).state == "open"
    assert pulls.merge(pr.number, check=lambda checked: None).state == "merged"


def test_a_record_that_is_a_folder_or_malformed_is_one_error(repo, pulls):
    pulls.record.mkdir(parents=True)
    with pytest.raises(GitOpsError, match=r"pulls.json is not a file; .* move it away"):
        pulls.list()
    pulls.record.rmdir()
    pulls.record.write_text('{"pulls": {"a": 1}}')
    with pytest.raises(GitOpsError, match="is not a pull-request record"):
        pulls.list()


def test_commit_order_and_file_history(repo):
    first = run(repo, "rev-parse", "HEAD")
    (repo / MODEL).write_text("version: 2\n")
    run(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "Roll back to 2")
    second = run(repo, "rev-parse", "HEAD")
    assert gitops.is_ancestor(repo, first, second) is True
    assert gitops.is_ancestor(repo, second, first) is False
    assert gitops.is_ancestor(repo, "0" * 40, first) is None  # unknown commit: no claim either way
    log = gitops.file_log(repo, MODEL)
    assert [(c, s) for c, s, _ in log] == [(second, "Roll back to 2"), (first, "initial")]
    assert [text for _, _, text in log] == ["version: 2\n", "version: none\n"]
    assert gitops.diff_paths(repo, first, second) == [MODEL]


def test_a_pull_request_opened_from_another_clone_is_checked_then_merged(repo, tmp_path):
    # CI (act, or a runner) opens the PR from its own copy: the head commit is only in the remote.
    local = LocalPullRequests(repo, repo / ".mlops")
    local.list()  # the record and the remote are shared through .mlops
    ci_copy = tmp_path / "ci"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(ci_copy)], check=True)
    pr = LocalPullRequests(ci_copy, repo / ".mlops").open_or_update(
        "promote/ci", "main", "Promote ci", "body", {MODEL: "version: 7\n"}
    )
    seen = []
    merged = local.merge(pr.number, check=lambda p: seen.append(gitops.show(repo, p.head, MODEL)))
    assert seen == ["version: 7\n"] and merged.state == "merged"
    assert (repo / MODEL).read_text() == "version: 7\n"
