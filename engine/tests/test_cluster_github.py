"""GitHubPullRequests (gitops.PullRequests on GitHub) against a local server that answers as
GitHub's REST API v3 does: pulls, files, merge, comments and the git data API."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from mlrail import gitops
from mlrail.cluster.github import GitHubError, GitHubPullRequests, repository_from_environment
from mlrail.cluster.http import ClusterCallError
from test_cluster_http import NO_WAIT, LocalServer

TOKEN = "ghs_test-installation-token"
REPO = "my-org/churn-classifier"
MODEL = "deploy/overlays/production/model.yaml"


def _sha(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class FakeGitHub:
    """One repository in memory (commits, trees, refs, pulls, comments) with GitHub's JSON shapes."""

    def __init__(self, page_size: int = 100):
        self.trees: dict[str, dict[str, str]] = {}
        self.commits: dict[str, dict] = {}
        self.refs: dict[str, str] = {}
        self.pulls: dict[int, dict] = {}
        self.comments: dict[int, dict] = {}
        self.page_size = page_size
        self.ids = iter(range(1000, 10**6))
        self.server: LocalServer | None = None
        self.refs["main"] = self.commit({MODEL: "version: none\n", "README.md": "hi\n"}, [], "initial")

    def tree(self, files: dict[str, str]) -> str:
        sha = _sha("tree", files)
        self.trees[sha] = dict(files)
        return sha

    def commit(self, files: dict[str, str], parents: list[str], message: str) -> str:
        tree = self.tree(files)
        sha = _sha("commit", tree, parents, message)
        self.commits[sha] = {"tree": tree, "parents": parents, "message": message}
        return sha

    def files_of(self, ref: str) -> dict[str, str]:
        return self.trees[self.commits[self.refs.get(ref, ref)]["tree"]]

    def _pr_json(self, pr: dict) -> dict:
        return {
            "number": pr["number"],
            "title": pr["title"],
            "body": pr["body"],
            "state": pr["state"],
            "merged_at": pr.get("merged_at"),
            "merge_commit_sha": pr.get("merge_commit_sha"),
            "html_url": f"https://github.com/{REPO}/pull/{pr['number']}",
            "head": {"ref": pr["head"], "sha": self.refs.get(pr["head"], pr.get("head_sha", ""))},
            "base": {"ref": pr["base"]},
        }

    def _page(self, request, items: list) -> tuple[int, dict, list]:
        per_page = min(int(request.query.get("per_page", ["30"])[0]), self.page_size)
        page = int(request.query.get("page", ["1"])[0])
        headers = {}
        if page * per_page < len(items):
            query = "&".join(f"{k}={v[0]}" for k, v in request.query.items() if k != "page")
            headers["Link"] = f'<{self.server.url}{request.path}?{query}&page={page + 1}>; rel="next"'
        return 200, headers, items[(page - 1) * per_page : page * per_page]

    def route(self, request):  # noqa: C901 - one branch per documented endpoint
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        path, method = request.path.removeprefix(f"/repos/{REPO}"), request.method
        if match := re.fullmatch(r"/git/ref/heads/(.+)", path):
            sha = self.refs.get(match[1])
            return (
                (200, {}, {"ref": f"refs/heads/{match[1]}", "object": {"sha": sha, "type": "commit"}})
                if sha
                else (404, {}, {"message": "Not Found"})
            )
        if match := re.fullmatch(r"/git/commits/([0-9a-f]{40})", path):
            commit = self.commits[match[1]]
            return (
                200,
                {},
                {
                    "sha": match[1],
                    "tree": {"sha": commit["tree"]},
                    "parents": [{"sha": p} for p in commit["parents"]],
                    "message": commit["message"],
                },
            )
        if path == "/git/trees" and method == "POST":
            data = request.json()
            files = dict(self.trees[data["base_tree"]])
            files.update({entry["path"]: entry["content"] for entry in data["tree"]})
            return 201, {}, {"sha": self.tree(files)}
        if path == "/git/commits" and method == "POST":
            data = request.json()
            sha = _sha("commit", data["tree"], data["parents"], data["message"])
            self.commits[sha] = {"tree": data["tree"], "parents": data["parents"], "message": data["message"]}
            return 201, {}, {"sha": sha, "tree": {"sha": data["tree"]}}
        if path == "/git/refs" and method == "POST":
            data = request.json()
            branch = data["ref"].removeprefix("refs/heads/")
            if branch in self.refs:
                return 422, {}, {"message": "Reference already exists"}
            self.refs[branch] = data["sha"]
            return 201, {}, {"ref": data["ref"], "object": {"sha": data["sha"]}}
        if (match := re.fullmatch(r"/git/refs/heads/(.+)", path)) and method == "PATCH":
            data = request.json()
            if not data.get("force") and self.refs[match[1]] not in self._ancestors(data["sha"]):
                return 422, {}, {"message": "Update is not a fast forward"}
            self.refs[match[1]] = data["sha"]
            return 200, {}, {"object": {"sha": data["sha"]}}
        if path == "/pulls" and method == "GET":
            state = request.query.get("state", ["open"])[0]
            head = request.query.get("head", [None])[0]
            pulls = [
                self._pr_json(pr)
                for pr in self.pulls.values()
                if (state == "all" or pr["state"] == state) and head in (None, f"my-org:{pr['head']}")
            ]
            return self._page(request, pulls)
        if path == "/pulls" and method == "POST":
            data = request.json()
            if data["head"] not in self.refs:
                return 422, {}, {"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]}
            if any(p["head"] == data["head"] and p["state"] == "open" for p in self.pulls.values()):
                return (
                    422,
                    {},
                    {
                        "message": "Validation Failed",
                        "errors": [{"message": f"A pull request already exists for my-org:{data['head']}."}],
                    },
                )
            number = len(self.pulls) + 1
            self.pulls[number] = {"number": number, "state": "open", **data}
            return 201, {}, self._pr_json(self.pulls[number])
        if match := re.fullmatch(r"/pulls/(\d+)", path):
            pr = self.pulls.get(int(match[1]))
            if pr is None:
                return 404, {}, {"message": "Not Found"}
            if method == "PATCH":
                pr.update(request.json())
            return 200, {}, self._pr_json(pr)
        if match := re.fullmatch(r"/pulls/(\d+)/files", path):
            pr = self.pulls[int(match[1])]
            head = self.files_of(pr.get("head_sha") or pr["head"])
            base = self.files_of(pr.get("base_sha") or pr["base"])
            changed = [
                {"filename": name, "status": "modified" if name in base else "added"}
                for name in sorted(head)
                if base.get(name) != head[name]
            ]
            return self._page(request, changed)
        if (match := re.fullmatch(r"/pulls/(\d+)/merge", path)) and method == "PUT":
            pr = self.pulls[int(match[1])]
            data = request.json()
            if pr["state"] != "open":
                return 405, {}, {"message": "Pull Request is not mergeable"}
            if data.get("sha") and data["sha"] != self.refs[pr["head"]]:
                return 409, {}, {"message": "Head branch was modified. Review and try the merge again."}
            assert data["merge_method"] == "squash"
            pr.update(base_sha=self.refs[pr["base"]], head_sha=self.refs[pr["head"]])
            merged = self.commit(self.files_of(pr["head"]), [self.refs[pr["base"]]], f"{pr['title']} (#{pr['number']})")
            self.refs[pr["base"]] = merged
            pr.update(state="closed", merged_at="2026-01-01T00:00:00Z", merge_commit_sha=merged)
            return 200, {}, {"sha": merged, "merged": True, "message": "Pull Request successfully merged"}
        if match := re.fullmatch(r"/issues/(\d+)/comments", path):
            number = int(match[1])
            if method == "POST":
                comment_id = next(self.ids)
                self.comments[comment_id] = {"id": comment_id, "issue": number, "body": request.json()["body"]}
                return 201, {}, self.comments[comment_id]
            return self._page(request, [c for c in self.comments.values() if c["issue"] == number])
        if (match := re.fullmatch(r"/issues/comments/(\d+)", path)) and method == "PATCH":
            self.comments[int(match[1])]["body"] = request.json()["body"]
            return 200, {}, self.comments[int(match[1])]
        return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}

    def _ancestors(self, sha: str) -> set[str]:
        seen, todo = set(), [sha]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo += self.commits[current]["parents"]
        return seen


@pytest.fixture()
def github(monkeypatch):
    fake = FakeGitHub(page_size=2)  # small pages: pagination is exercised
    with LocalServer(fake.route) as server:
        fake.server = server
        monkeypatch.setenv("GITHUB_API_URL", server.url)
        monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
        monkeypatch.setenv("GH_TOKEN", TOKEN)
        yield fake, GitHubPullRequests("production", retry=NO_WAIT)


def test_promotion_pr_is_one_commit_on_main_then_merged(github):
    fake, prs = github
    pr = prs.open_or_update("promote/v3", "main", "Promote v3", "| metric |", {MODEL: "version: '3'\n"})
    assert isinstance(pr, gitops.PullRequest)
    assert (pr.number, pr.branch, pr.base, pr.state, pr.files) == (1, "promote/v3", "main", "open", [MODEL])
    head = fake.commits[fake.refs["promote/v3"]]
    assert head["parents"] == [fake.refs["main"]] and fake.files_of("promote/v3")[MODEL] == "version: '3'\n"
    assert pr.head == fake.refs["promote/v3"]
    merged = prs.merge(1)
    assert merged.state == "merged" and merged.merge_commit == fake.refs["main"]
    assert fake.files_of("main")[MODEL] == "version: '3'\n"
    assert prs.merge(1).merge_commit == merged.merge_commit  # merging again changes nothing


def test_rerunning_open_or_update_converges_on_one_pr_and_one_commit(github):
    fake, prs = github
    first = prs.open_or_update("promote/v4", "main", "Promote v4", "body 1", {MODEL: "version: '4'\n"})
    commits = len(fake.commits)
    second = prs.open_or_update("promote/v4", "main", "Promote v4", "body 2", {MODEL: "version: '4'\n"})
    assert second.number == first.number and second.head == first.head and len(fake.commits) == commits
    assert len(fake.pulls) == 1 and fake.pulls[1]["body"] == "body 2"
    third = prs.open_or_update("promote/v4", "main", "Promote v4b", "body 3", {MODEL: "version: '5'\n"})
    assert third.number == 1 and third.head != first.head  # the branch was force-moved to the new content


def test_a_concurrent_duplicate_422_resolves_to_the_existing_pr(github, monkeypatch):
    fake, prs = github
    prs.open_or_update("promote/y", "main", "Promote", "body", {MODEL: "version: '9'\n"})
    real = prs._list_raw
    misses = iter([[]])  # the lookup misses the PR once, as if it was opened in between
    monkeypatch.setattr(prs, "_list_raw", lambda state, head=None: next(misses, None) or real(state, head))
    pr = prs.open_or_update("promote/y", "main", "Promote again", "body 2", {MODEL: "version: '9'\n"})
    assert pr.number == 1 and len(fake.pulls) == 1 and fake.pulls[1]["title"] == "Promote again"


def test_a_pr_that_changes_nothing_is_refused(github):
    _, prs = github
    with pytest.raises(GitHubError, match="would change nothing: main already has this content"):
        prs.open_or_update("promote/none", "main", "No-op", "", {MODEL: "version: none\n"})
    with pytest.raises(GitHubError, match="changes no file"):
        prs.open_or_update("promote/none", "main", "No-op", "", {})
    with pytest.raises(GitHubError, match="base branch 'release' does not exist"):
        prs.open_or_update("promote/x", "release", "x", "", {MODEL: "v"})


def test_list_follows_pagination_and_maps_states(github):
    fake, prs = github
    for index in range(5):
        prs.open_or_update(f"b{index}", "main", f"PR {index}", "", {f"docs/{index}.md": f"{index}\n"})
    prs.close(2)
    prs.merge(3)
    assert [pr.number for pr in prs.list("open")] == [1, 4, 5]
    assert {pr.number: pr.state for pr in prs.list()} == {1: "open", 2: "closed", 3: "merged", 4: "open", 5: "open"}
    assert [pr.number for pr in prs.list("merged")] == [3]
    assert prs.find_open("b4").title == "PR 4" and prs.find_open("b2") is None
    with pytest.raises(GitHubError, match="state 'draft' is unknown"):
        prs.list("draft")


def test_merge_refuses_a_moved_branch_and_closed_or_merged_prs_are_final(github):
    fake, prs = github
    prs.open_or_update("m", "main", "m", "", {MODEL: "version: '7'\n"})
    real_get = prs.get

    def stale_get(number):
        pr = real_get(number)
        pr.head = "f" * 40  # reviewed at another commit than the branch's
        return pr

    prs.get = stale_get
    with pytest.raises(ClusterCallError, match=r"GitHub \(production\) PUT .*/pulls/1/merge answered 409: Head branch"):
        prs.merge(1)
    prs.get = real_get
    prs.close(1)
    with pytest.raises(GitHubError, match="pull request #1 is closed"):
        prs.merge(1)
    prs.open_or_update("n", "main", "n", "", {MODEL: "version: '8'\n"})
    prs.merge(2)
    with pytest.raises(GitHubError, match="already merged; revert it"):
        prs.close(2)


def test_sticky_comment_is_created_once_then_edited(github):
    fake, prs = github
    prs.open_or_update("d", "main", "diff", "", {"docs/a.md": "a\n"})
    for other in range(3):  # other people's comments, over two pages
        fake.comments[100 + other] = {"id": 100 + other, "issue": 1, "body": f"review {other}"}
    first_id, created = prs.upsert_comment(1, "## Overlay diff\nv1", marker="mlops-overlay-diff")
    second_id, created_again = prs.upsert_comment(1, "## Overlay diff\nv2", marker="mlops-overlay-diff")
    assert created and not created_again and first_id == second_id
    ours = [c for c in fake.comments.values() if "<!-- mlops-overlay-diff -->" in c["body"]]
    assert len(ours) == 1 and ours[0]["body"].endswith("v2") and len(fake.comments) == 4


def test_a_bad_token_names_environment_and_endpoint(github):
    fake, _ = github
    prs = GitHubPullRequests("production", token="wrong", retry=NO_WAIT)
    with pytest.raises(ClusterCallError) as caught:
        prs.list()
    assert f"GitHub (production) GET {fake.server.url}/repos/{REPO}/pulls" in str(caught.value)
    assert "401: Bad credentials" in str(caught.value)


def test_gitops_factory_selects_github_for_a_cluster_production(github, project_copy, monkeypatch):
    from mlrail import config

    fake, _ = github
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    prs = gitops.pull_requests(config.load())
    assert isinstance(prs, GitHubPullRequests) and prs.repository == REPO
    assert prs.open_or_update("promote/f", "main", "f", "", {MODEL: "version: '2'\n"}).number == 1


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
