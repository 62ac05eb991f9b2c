"""The GitHub API emulator at the REST level: auth headers, real refs and merges in the bare
repository, files from git diff, pagination, contents and reviews, as GitHub's REST docs shape them."""

from __future__ import annotations

import base64
import subprocess

import pytest
import requests

from sim.github_api import APP_LOGIN, GitHubEmulator, git, seed_repository

APP = "ghs_app-installation-token"
ALICE = "ghp_alice"
REPO = "acme/fraud-scorer"


@pytest.fixture()
def gh(tmp_path):
    bare = tmp_path / "origin.git"
    seed_repository(bare, {"a.txt": "a\n", "dir/b.txt": "b\n"})
    with GitHubEmulator(bare, REPO, {APP: APP_LOGIN, ALICE: "alice"}, page_size=2) as emulator:
        yield emulator


def call(gh, method, path, token=APP, scheme="token", **kwargs):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return requests.request(method, f"{gh.url}/repos/{REPO}{path}", headers=headers, timeout=10, **kwargs)


def branch(gh, name, files, message="change"):
    """A branch off main holding `files`, through the git data API as a client builds one."""
    main = call(gh, "GET", "/git/ref/heads/main").json()["object"]["sha"]
    base_tree = call(gh, "GET", f"/git/commits/{main}").json()["tree"]["sha"]
    entries = [{"path": p, "mode": "100644", "type": "blob", "content": c} for p, c in files.items()]
    tree = call(gh, "POST", "/git/trees", json={"base_tree": base_tree, "tree": entries}).json()["sha"]
    commit = call(gh, "POST", "/git/commits", json={"message": message, "tree": tree, "parents": [main]}).json()["sha"]
    assert call(gh, "POST", "/git/refs", json={"ref": f"refs/heads/{name}", "sha": commit}).status_code == 201
    return commit


def test_auth_accepts_token_and_bearer_and_records_every_request(gh):
    assert call(gh, "GET", "", scheme="Bearer").json()["full_name"] == REPO
    assert call(gh, "GET", "").status_code == 200
    missing = call(gh, "GET", "", token=None)
    assert missing.status_code == 401 and missing.json()["message"] == "Requires authentication"
    assert call(gh, "GET", "", token="forged").json()["message"] == "Bad credentials"
    assert [(r.method, r.token, r.status) for r in gh.requests] == [
        ("GET", APP, 200),
        ("GET", APP, 200),
        ("GET", None, 401),
        ("GET", "forged", 401),
    ]


def test_branches_are_real_refs_and_the_data_api_writes_real_objects(gh):
    commit = branch(gh, "feature", {"a.txt": "changed\n", "new.txt": "n\n"})
    assert gh.sha("refs/heads/feature") == commit
    assert git(gh.bare, "show", "feature:a.txt") == "changed"
    assert git(gh.bare, "log", "-1", "--format=%an", "feature") == APP_LOGIN
    assert call(gh, "GET", "/branches/feature").json()["commit"]["sha"] == commit
    again = call(gh, "POST", "/git/refs", json={"ref": "refs/heads/feature", "sha": commit})
    assert again.status_code == 422 and again.json()["message"] == "Reference already exists"
    main = gh.sha("refs/heads/main")
    not_ff = call(gh, "PATCH", "/git/refs/heads/feature", json={"sha": main})
    assert not_ff.status_code == 422 and not_ff.json()["message"] == "Update is not a fast forward"
    assert call(gh, "PATCH", "/git/refs/heads/feature", json={"sha": main, "force": True}).status_code == 200
    assert gh.sha("refs/heads/feature") == main


def test_pull_request_files_come_from_git_diff_and_a_merge_is_a_real_merge(gh):
    branch(gh, "feature", {"a.txt": "changed\n", "new.txt": "n\n"})
    pr = call(gh, "POST", "/pulls", json={"title": "T", "body": "B", "head": "feature", "base": "main"}).json()
    assert (pr["number"], pr["state"], pr["head"]["ref"], pr["base"]["ref"], pr["mergeable"]) == (
        1,
        "open",
        "feature",
        "main",
        True,
    )
    files = call(gh, "GET", "/pulls/1/files").json()
    assert [(f["filename"], f["status"]) for f in files] == [("a.txt", "modified"), ("new.txt", "added")]
    duplicate = call(gh, "POST", "/pulls", json={"title": "T", "head": "feature", "base": "main"})
    assert duplicate.status_code == 422 and "already exists" in duplicate.json()["errors"][0]["message"]
    merged = call(gh, "PUT", "/pulls/1/merge", json={"merge_method": "merge"}).json()
    parents = git(gh.bare, "rev-list", "--parents", "-n1", "main").split()
    assert parents[0] == merged["sha"] == gh.sha("refs/heads/main") and len(parents) == 3  # a merge commit
    assert git(gh.bare, "show", "main:new.txt") == "n"
    after = call(gh, "GET", "/pulls/1").json()
    assert after["merged"] and after["state"] == "closed" and after["merge_commit_sha"] == merged["sha"]
    assert call(gh, "PUT", "/pulls/1/merge", json={}).status_code == 405
    assert call(gh, "GET", "/pulls/1/merge").status_code == 204
    assert [f["filename"] for f in call(gh, "GET", "/pulls/1/files").json()] == ["a.txt", "new.txt"]
    nothing = call(gh, "POST", "/pulls", json={"title": "T", "head": "feature", "base": "main"})
    assert (
        nothing.status_code == 422 and "No commits between main and feature" in nothing.json()["errors"][0]["message"]
    )


def test_a_push_to_the_bare_repository_and_a_rename_show_in_the_files(gh, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(gh.bare), str(clone)], check=True)
    subprocess.run(["git", "mv", "dir/b.txt", "dir/c.txt"], cwd=clone, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "mv"], cwd=clone, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/rename"], cwd=clone, check=True)
    call(gh, "POST", "/pulls", json={"title": "mv", "head": "acme:rename", "base": "main"}).raise_for_status()
    (item,) = call(gh, "GET", "/pulls/1/files").json()
    assert (item["filename"], item["status"], item["previous_filename"]) == ("dir/c.txt", "renamed", "dir/b.txt")


def test_lists_are_paginated_with_link_headers(gh):
    for index in range(3):
        branch(gh, f"b{index}", {f"f{index}.txt": "x\n"})
        call(gh, "POST", "/pulls", json={"title": f"{index}", "head": f"b{index}", "base": "main"}).raise_for_status()
    first = call(gh, "GET", "/pulls", params={"state": "all", "per_page": 100})
    assert [p["number"] for p in first.json()] == [3, 2]  # newest first; page size capped at 2
    assert 'rel="next"' in first.headers["Link"] and "page=2" in first.headers["Link"]
    second = requests.get(first.links["next"]["url"], headers={"Authorization": f"token {APP}"}, timeout=10)
    assert [p["number"] for p in second.json()] == [1] and "next" not in second.links
    assert [p["number"] for p in call(gh, "GET", "/pulls", params={"head": "acme:b1"}).json()] == [2]


def test_contents_of_files_and_directories_at_a_ref(gh):
    got = call(gh, "GET", "/contents/dir/b.txt", params={"ref": "main"}).json()
    assert got["type"] == "file" and base64.b64decode(got["content"]) == b"b\n" and got["encoding"] == "base64"
    listing = call(gh, "GET", "/contents/dir").json()
    assert [(e["name"], e["type"]) for e in listing] == [("b.txt", "file")]
    assert call(gh, "GET", "/contents/nope.txt").status_code == 404


def test_reviews_gate_merges_and_nobody_approves_their_own_pr(gh):
    gh.required_approvals = 1
    branch(gh, "f", {"a.txt": "z\n"})
    call(gh, "POST", "/pulls", json={"title": "f", "head": "f", "base": "main"}).raise_for_status()
    own = call(gh, "POST", "/pulls/1/reviews", json={"event": "APPROVE"})
    assert own.status_code == 422 and "Can not approve your own pull request" in own.json()["errors"][0]
    assert call(gh, "PUT", "/pulls/1/merge", json={"merge_method": "squash"}).status_code == 405
    review = call(gh, "POST", "/pulls/1/reviews", token=ALICE, json={"event": "APPROVE"}).json()
    assert review["state"] == "APPROVED" and review["user"]["login"] == "alice"
    squashed = call(gh, "PUT", "/pulls/1/merge", json={"merge_method": "squash"})
    assert squashed.status_code == 200
    assert len(git(gh.bare, "rev-list", "--parents", "-n1", "main").split()) == 2  # squash: one parent
    assert git(gh.bare, "log", "-1", "--format=%s", "main") == "f (#1)"


def test_injected_rate_limit_answers_as_github(gh):
    gh.fail_next("GET", r"/pulls$", 403, headers={"Retry-After": "7"})
    limited = call(gh, "GET", "/pulls")
    assert limited.status_code == 403 and limited.headers["Retry-After"] == "7"
    assert limited.json()["message"].startswith("You have exceeded a secondary rate limit")
    assert call(gh, "GET", "/pulls").status_code == 200
