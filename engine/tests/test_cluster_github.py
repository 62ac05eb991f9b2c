"""GitHubPullRequests (gitops.PullRequests on GitHub, through PyGithub) against the GitHub API
emulator of the cluster simulation: a real bare repository, real merges, App-token auth."""

from __future__ import annotations

import subprocess
import time

import pytest

from mlrail import gitops
from mlrail.cluster.github import GitHubError, GitHubPullRequests, repository_from_environment
from mlrail.cluster.http import Retry, Timeouts
from sim import SilentServer
from sim.github_api import APP_LOGIN, GitHubEmulator, seed_repository

TOKEN = "ghs_test-installation-token"  # what actions/create-github-app-token hands out
REVIEWER = "ghp_reviewer-token"
REPO = "my-org/churn-classifier"
RELEASE = "deploy/overlays/production/release.yaml"
FAST = Timeouts(connect_s=0.5, read_s=1.0, deadline_s=3.0)
NO_WAIT = Retry(attempts=3, backoff=0.0)


def _client(**kwargs) -> GitHubPullRequests:
    options = {"timeouts": FAST, "retry": NO_WAIT, "seconds_between_writes": None, **kwargs}
    return GitHubPullRequests("production", **options)


@pytest.fixture()
def github(monkeypatch, tmp_path):
    bare = tmp_path / "origin.git"
    seed_repository(bare, {RELEASE: "model:\n  version: none\n", "README.md": "hi\n"})
    with GitHubEmulator(bare, REPO, {TOKEN: APP_LOGIN, REVIEWER: "alice"}, page_size=2) as emulator:
        monkeypatch.setenv("GITHUB_API_URL", emulator.url)
        monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
        monkeypatch.setenv("GH_TOKEN", TOKEN)
        yield emulator, _client()


def test_promotion_pr_is_one_commit_on_main_then_merged_for_real(github):
    emulator, prs = github
    main_before = emulator.sha("refs/heads/main")
    pr = prs.open_or_update("promote/v3", "main", "Promote v3", "| metric |", {RELEASE: "model:\n  version: '3'\n"})
    assert isinstance(pr, gitops.PullRequest)
    assert (pr.number, pr.branch, pr.base, pr.state, pr.files) == (1, "promote/v3", "main", "open", [RELEASE])
    assert pr.head == emulator.sha("refs/heads/promote/v3")
    parents = subprocess.run(
        ["git", "rev-list", "--parents", "-n1", pr.head], cwd=emulator.bare, capture_output=True, text=True, check=True
    ).stdout.split()
    assert parents[1:] == [main_before]  # one commit on top of main
    merged = prs.merge(1)
    assert merged.state == "merged" and merged.merge_commit == emulator.sha("refs/heads/main")
    assert emulator.show("main", RELEASE) == "model:\n  version: '3'\n"
    assert emulator.show("main", "README.md") == "hi\n"
    assert prs.merge(1).merge_commit == merged.merge_commit  # merging again changes nothing
    assert prs.get(1).files == [RELEASE]  # the PR's diff survives its merge
    assert {r.token for r in emulator.requests} == {TOKEN}


def test_rerunning_open_or_update_converges_on_one_pr_and_one_commit(github):
    emulator, prs = github
    first = prs.open_or_update("promote/v4", "main", "Promote v4", "body 1", {RELEASE: "v: '4'\n"})
    commits = len(emulator.calls("POST", r"/git/commits$"))
    second = prs.open_or_update("promote/v4", "main", "Promote v4", "body 2", {RELEASE: "v: '4'\n"})
    assert second.number == first.number and second.head == first.head
    assert len(emulator.calls("POST", r"/git/commits$")) == commits  # no new commit
    assert len(emulator.pulls) == 1 and emulator.pulls[1].body == "body 2"
    third = prs.open_or_update("promote/v4", "main", "Promote v4b", "body 3", {RELEASE: "v: '5'\n"})
    assert third.number == 1 and third.head != first.head  # the branch was force-moved to the new content
    assert emulator.show("promote/v4", RELEASE) == "v: '5'\n"


def test_a_concurrent_duplicate_422_resolves_to_the_existing_pr(github, monkeypatch):
    emulator, prs = github
    prs.open_or_update("promote/y", "main", "Promote", "body", {RELEASE: "v: '9'\n"})
    real = prs._open_with_head
    missed = []

    def lookup(branch):  # misses the PR once, as if it was opened in between
        if not missed:
            missed.append(branch)
            return []
        return real(branch)

    monkeypatch.setattr(prs, "_open_with_head", lookup)
    pr = prs.open_or_update("promote/y", "main", "Promote again", "body 2", {RELEASE: "v: '9'\n"})
    assert pr.number == 1 and len(emulator.pulls) == 1 and emulator.pulls[1].title == "Promote again"
    assert [r.status for r in emulator.calls("POST", r"/pulls$")] == [201, 422]


def test_a_pr_that_changes_nothing_is_refused(github):
    _, prs = github
    with pytest.raises(GitHubError, match="would change nothing: main already has this content"):
        prs.open_or_update("promote/none", "main", "No-op", "", {RELEASE: "model:\n  version: none\n"})
    with pytest.raises(GitHubError, match="changes no file"):
        prs.open_or_update("promote/none", "main", "No-op", "", {})
    with pytest.raises(GitHubError, match="base branch 'release' does not exist"):
        prs.open_or_update("promote/x", "release", "x", "", {RELEASE: "v"})


def test_list_follows_pagination_and_maps_states(github):
    emulator, prs = github
    for index in range(5):
        prs.open_or_update(f"b{index}", "main", f"PR {index}", "", {f"docs/{index}.md": f"{index}\n"})
    prs.close(2)
    prs.merge(3)
    assert [pr.number for pr in prs.list("open")] == [1, 4, 5]
    assert {pr.number: pr.state for pr in prs.list()} == {1: "open", 2: "closed", 3: "merged", 4: "open", 5: "open"}
    assert [pr.number for pr in prs.list("merged")] == [3]
    assert prs.find_open("b4").title == "PR 4" and prs.find_open("b2") is None
    assert any(
        "page=3" in "&".join(f"{k}={v[0]}" for k, v in r.query.items()) for r in emulator.calls("GET", r"/pulls$")
    )
    with pytest.raises(GitHubError, match="state 'draft' is unknown"):
        prs.list("draft")


def test_merge_refuses_a_moved_branch_and_closed_or_merged_prs_are_final(github):
    emulator, prs = github
    prs.open_or_update("m", "main", "m", "", {RELEASE: "v: '7'\n"})
    real_get = prs._get_raw

    def moved_after_read(number):
        raw = real_get(number)
        prs._get_raw = real_get
        # someone pushes to the branch between our read and our merge
        prs.open_or_update("m", "main", "m", "", {RELEASE: "v: '7b'\n"})
        return raw

    prs._get_raw = moved_after_read
    with pytest.raises(
        GitHubError, match=r"merging pull request #1 in my-org/churn-classifier failed: 409 Head branch"
    ):
        prs.merge(1)
    prs._get_raw = real_get
    assert emulator.show("main", RELEASE) == "model:\n  version: none\n"  # nothing merged
    prs.close(1)
    with pytest.raises(GitHubError, match="pull request #1 is closed"):
        prs.merge(1)
    prs.open_or_update("n", "main", "n", "", {RELEASE: "v: '8'\n"})
    prs.merge(2)
    with pytest.raises(GitHubError, match="already merged; revert it"):
        prs.close(2)


def test_a_merge_that_conflicts_is_refused_and_main_is_untouched(github):
    emulator, prs = github
    prs.open_or_update("a", "main", "a", "", {RELEASE: "v: a\n"})
    prs.open_or_update("b", "main", "b", "", {RELEASE: "v: b\n"})
    prs.merge(1)
    main = emulator.sha("refs/heads/main")
    with pytest.raises(GitHubError, match="405 Merge conflict"):
        prs.merge(2)
    assert emulator.sha("refs/heads/main") == main and prs.get(2).state == "open"


def test_required_reviews_gate_the_merge(github):
    emulator, prs = github
    emulator.required_approvals = 1
    prs.open_or_update("r", "main", "r", "", {RELEASE: "v: r\n"})
    with pytest.raises(GitHubError, match="405 At least 1 approving review is required"):
        prs.merge(1)
    emulator.approve(1, REVIEWER)
    assert prs.reviews(1) == {"alice": "APPROVED"}
    assert prs.merge(1).state == "merged"


def test_sticky_comment_is_created_once_then_edited(github):
    emulator, prs = github
    prs.open_or_update("d", "main", "diff", "", {"docs/a.md": "a\n"})
    reviewer = GitHubPullRequests("pull-request", token=REVIEWER, timeouts=FAST, seconds_between_writes=None)
    for other in range(3):  # other people's comments, over two pages
        reviewer.repo.get_pull(1).create_issue_comment(f"review {other}")
    first_id, created = prs.upsert_comment(1, "## Overlay diff\nv1", marker="mlops-overlay-diff")
    second_id, created_again = prs.upsert_comment(1, "## Overlay diff\nv2", marker="mlops-overlay-diff")
    third_id, created_third = prs.upsert_comment(1, "## Overlay diff\nv2", marker="mlops-overlay-diff")
    assert created and not created_again and not created_third and first_id == second_id == third_id
    ours = [c for c in emulator.comments.values() if "<!-- mlops-overlay-diff -->" in c["body"]]
    assert len(ours) == 1 and ours[0]["body"].endswith("v2") and ours[0]["user"]["login"] == APP_LOGIN
    assert len(emulator.comments) == 4
    assert len(emulator.calls("PATCH", r"/issues/comments/")) == 1  # an unchanged body is not re-sent


def test_labels_and_contents(github):
    emulator, prs = github
    prs.open_or_update("l", "main", "l", "", {RELEASE: "v: l\n"})
    assert prs.add_labels(1, "promotion", "production") == ["production", "promotion"]
    assert prs.add_labels(1, "promotion") == ["production", "promotion"]
    assert prs.remove_label(1, "production") == ["promotion"]
    assert prs.remove_label(1, "absent") == ["promotion"]
    assert prs.read_file(RELEASE, "l") == "v: l\n"
    assert prs.read_file(RELEASE, "main") == "model:\n  version: none\n"
    assert prs.read_file("nope.yaml", "main") is None
    assert prs.branch_sha("l") == emulator.sha("refs/heads/l") and prs.branch_sha("nope") is None
    with pytest.raises(GitHubError, match="is a directory"):
        prs.read_file("deploy", "main")


def test_a_git_push_to_the_bare_repository_is_seen_by_the_api(github, tmp_path):
    emulator, prs = github
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(emulator.bare), str(clone)], check=True)
    (clone / "docs.md").write_text("pushed\n")
    for args in (["add", "docs.md"], ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "docs"]):
        subprocess.run(["git", *args], cwd=clone, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/feature"], cwd=clone, check=True)
    pr = prs._call("opening", prs.repo.create_pull, base="main", head="feature", title="f", body="")
    assert prs.get(pr.number).files == ["docs.md"] and prs.read_file("docs.md", "feature") == "pushed\n"


def test_the_secondary_rate_limit_403_is_waited_out_then_retried(github):
    emulator, prs = github
    prs.open_or_update("s", "main", "s", "", {RELEASE: "v: s\n"})
    emulator.fail_next("POST", r"/issues/1/comments$", 403, headers={"Retry-After": "1"})
    began = time.monotonic()
    _, created = prs.upsert_comment(1, "body", marker="m")
    assert created and time.monotonic() - began >= 0.9
    assert [r.status for r in emulator.calls("POST", r"/issues/1/comments$")] == [403, 201]
    assert len(emulator.comments) == 1  # retried once, commented once


def test_a_rate_limit_longer_than_the_deadline_fails_now_naming_the_setting(github):
    emulator, prs = github
    prs.open_or_update("t", "main", "t", "", {RELEASE: "v: t\n"})
    emulator.fail_next("GET", r"/pulls/1$", 403)  # secondary limit, no Retry-After: GitHub wants ~60 s
    began = time.monotonic()
    with pytest.raises(GitHubError) as caught:
        prs.get(1)
    assert time.monotonic() - began < 2
    message = str(caught.value)
    assert "reading pull request #1 in my-org/churn-classifier failed: gave up after 3s" in message
    assert "last: answered 403: You have exceeded a secondary rate limit" in message and "wait 60s" in message
    assert "raise timeouts.deadline_s in config/environments.yaml" in message


def test_a_5xx_on_a_write_is_not_resent(github):
    emulator, prs = github
    prs.open_or_update("w", "main", "w", "", {RELEASE: "v: w\n"})
    emulator.fail_next("POST", r"/issues/1/comments$", 502, message="Server Error")
    with pytest.raises(GitHubError, match="commenting on #1 .* failed: 502 Server Error"):
        prs.upsert_comment(1, "body", marker="m")
    assert len(emulator.calls("POST", r"/issues/1/comments$")) == 1 and not emulator.comments
    emulator.fail_next("GET", r"/pulls/1$", 503, message="Unavailable", times=2)
    assert prs.get(1).number == 1  # reads are retried


def test_a_bad_token_names_environment_server_and_repository(github):
    emulator, _ = github
    prs = _client(token="wrong")
    with pytest.raises(GitHubError) as caught:
        prs.list()
    assert f"GitHub (production) {emulator.url}: opening the repository in {REPO} failed: 401 Bad credentials" in str(
        caught.value
    )
    assert emulator.requests[-1].token == "wrong"


def test_a_github_that_never_answers_fails_within_the_deadline(monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    with SilentServer() as server:
        prs = GitHubPullRequests(
            "staging", token=TOKEN, api_url=server.url, timeouts=Timeouts(0.5, 0.4, 1.5), retry=Retry(attempts=20)
        )
        began = time.monotonic()
        with pytest.raises(GitHubError) as caught:
            prs.get(1)
        assert time.monotonic() - began < 2.5
    assert "gave up after 1.5s (raise timeouts.deadline_s in config/environments.yaml)" in str(caught.value)


def test_gitops_factory_selects_github_for_a_cluster_production(github, project_copy, monkeypatch):
    from mlrail import config

    _, _ = github
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    prs = gitops.pull_requests(config.load())
    assert isinstance(prs, GitHubPullRequests) and prs.repository == REPO
    assert prs.find_open("promote/f") is None


def test_missing_token_or_repository_is_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    with pytest.raises(GitHubError, match="no GitHub token: set GH_TOKEN"):
        GitHubPullRequests("staging")
    monkeypatch.setenv("GITHUB_REPOSITORY", "not a repo")
    with pytest.raises(GitHubError, match="is not of the form owner/repo"):
        repository_from_environment()
    monkeypatch.delenv("GITHUB_REPOSITORY")
    with pytest.raises(GitHubError, match="the GitHub repository is unknown"):
        repository_from_environment(tmp_path)  # not a git repository


def test_repository_is_read_from_the_origin_remote(monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "remote", "add", "origin", "git@github.com:acme/fraud-model.git"], check=True
    )
    assert repository_from_environment(tmp_path) == "acme/fraud-model"
