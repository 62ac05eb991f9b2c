"""Pull requests on GitHub through the REST API (v3): the cluster form of gitops' PullRequests.

The token comes from GH_TOKEN or GITHUB_TOKEN (in CI: a GitHub App installation token, so the
PRs it opens trigger workflows); GITHUB_API_URL is honoured (GitHub Enterprise, or a local
server in tests); the repository is GITHUB_REPOSITORY or the `origin` remote. A PR's branch is
built with the git data API (tree, commit, ref), so CI needs no clone and stores no git credentials.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from typing import Any
from urllib.parse import quote

from ..errors import MlopsError
from ..gitops import PullRequest
from .http import ClusterCallError, JsonApi, Retry

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
PAGE_SIZE = 100


class GitHubError(MlopsError):
    """GitHub is not configured or refused a pull-request operation."""


def _state(raw: dict[str, Any]) -> str:
    return "merged" if raw.get("merged_at") or raw.get("merged") else raw.get("state", "open")


def repository_from_environment(cwd: str | os.PathLike | None = None) -> str:
    """owner/repo from GITHUB_REPOSITORY, else from the `origin` remote's URL."""
    repo = os.environ.get("GITHUB_REPOSITORY", "").strip()
    if repo:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise GitHubError(f"GITHUB_REPOSITORY={repo!r} is not of the form owner/repo")
        return repo
    result = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=cwd, capture_output=True, text=True, check=False
    )
    match = re.search(r"github\.com[:/]+([\w.-]+)/([\w.-]+?)(?:\.git)?/?$", result.stdout.strip())
    if result.returncode != 0 or not match:
        raise GitHubError(
            "the GitHub repository is unknown: set GITHUB_REPOSITORY=owner/repo or add a github.com `origin` remote"
        )
    return f"{match.group(1)}/{match.group(2)}"


def token_from_environment() -> str:
    token = os.environ.get("GH_TOKEN", "").strip() or os.environ.get("GITHUB_TOKEN", "").strip()
    if not token:
        raise GitHubError(
            "no GitHub token: set GH_TOKEN (in CI, the GitHub App token from actions/create-github-app-token)"
        )
    return token


class GitHubPullRequests:
    """gitops.PullRequests on GitHub, plus the sticky comment and branch helpers CI uses."""

    def __init__(
        self,
        env: str,
        repository: str | None = None,
        token: str | None = None,
        api_url: str | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        merge_method: str = "squash",
    ):
        self.env = env
        self.repository = repository or repository_from_environment()
        self.owner = self.repository.split("/", 1)[0]
        self.merge_method = merge_method
        self.api = JsonApi(
            service="GitHub",
            env=env,
            base_url=(api_url or os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/"),
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token or token_from_environment()}",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "mlops-gitops",
            },
            timeout=timeout,
            retry=retry or Retry(),
        )

    @classmethod
    def for_config(cls, cfg) -> GitHubPullRequests:
        """The factory gitops.BACKENDS["github"] calls: promotion and rollback PRs move production."""
        return cls("production", repository=repository_from_environment(cfg.root))

    # --- the PullRequests protocol ----------------------------------------------------------

    def find_open(self, branch: str) -> PullRequest | None:
        found = self._list_raw("open", head=branch)
        return self._pull_request(found[0]) if found else None

    def list(self, state: str | None = None) -> list[PullRequest]:
        if state is not None and state not in ("open", "merged", "closed"):
            raise GitHubError(f"pull request state {state!r} is unknown; expected open, merged or closed")
        raw = self._list_raw("open" if state == "open" else "all")
        pulls = [self._pull_request(item, with_files=False) for item in raw]
        return sorted((pr for pr in pulls if state is None or pr.state == state), key=lambda pr: pr.number)

    def get(self, number: int) -> PullRequest:
        return self._pull_request(self.api.json("GET", self._repo(f"/pulls/{int(number)}")))

    def open_or_update(
        self, branch: str, base: str, title: str, body: str, files_changed: dict[str, str]
    ) -> PullRequest:
        """Point `branch` at one commit = `base` + `files_changed`, then open or update its PR.

        A rerun with the same content moves nothing and edits the one open PR."""
        if not files_changed:
            raise GitHubError(f"pull request {branch!r} changes no file; pass at least one path and its content")
        head = self._branch_commit(branch, base, files_changed, title)
        existing = self._list_raw("open", head=branch)
        if existing:
            raw = self.api.json(
                "PATCH", self._repo(f"/pulls/{existing[0]['number']}"), json={"title": title, "body": body}
            )
        else:
            payload = {"title": title, "body": body, "head": branch, "base": base}
            try:
                raw = self.api.json("POST", self._repo("/pulls"), json=payload)
            except ClusterCallError as exc:
                # 422 "A pull request already exists": opened concurrently; converge on it.
                again = self._list_raw("open", head=branch) if exc.status == 422 else []
                if not again:
                    raise
                raw = self.api.json(
                    "PATCH", self._repo(f"/pulls/{again[0]['number']}"), json={"title": title, "body": body}
                )
        pr = self._pull_request(raw)
        pr.head = head
        return pr

    def merge(self, number: int) -> PullRequest:
        """Merge on GitHub; merging an already merged PR returns it unchanged."""
        pr = self.get(number)
        if pr.state == "closed":
            raise GitHubError(f"pull request #{number} is closed; open a new one instead of merging it")
        if pr.state == "open":
            # sha: refuse to merge if the branch moved after the PR was read
            self.api.json(
                "PUT",
                self._repo(f"/pulls/{int(number)}/merge"),
                json={"merge_method": self.merge_method, "sha": pr.head},
            )
            pr = self.get(number)
        return pr

    def close(self, number: int) -> PullRequest:
        pr = self.get(number)
        if pr.state == "merged":
            raise GitHubError(f"pull request #{number} is already merged; revert it with a new pull request")
        if pr.state == "open":
            pr = self._pull_request(
                self.api.json("PATCH", self._repo(f"/pulls/{int(number)}"), json={"state": "closed"})
            )
        return pr

    # --- beyond the protocol ----------------------------------------------------------------

    def files(self, number: int) -> list[str]:
        """Paths the PR changes (a rename lists both its old and new path)."""
        paths: list[str] = []
        for item in self._pages(self._repo(f"/pulls/{int(number)}/files")):
            if item.get("previous_filename"):
                paths.append(item["previous_filename"])
            paths.append(item["filename"])
        return paths

    def upsert_comment(self, number: int, body: str, marker: str) -> tuple[int, bool]:
        """Create or edit the one comment carrying `marker`; returns (comment id, created)."""
        tag = f"<!-- {marker} -->"
        text = body if tag in body else f"{tag}\n{body}"
        for comment in self._pages(self._repo(f"/issues/{int(number)}/comments")):
            if tag in (comment.get("body") or ""):
                if comment.get("body") != text:
                    self.api.json("PATCH", self._repo(f"/issues/comments/{comment['id']}"), json={"body": text})
                return int(comment["id"]), False
        raw = self.api.json("POST", self._repo(f"/issues/{int(number)}/comments"), json={"body": text})
        return int(raw["id"]), True

    def branch_sha(self, branch: str) -> str | None:
        response = self.api.request("GET", self._repo(f"/git/ref/heads/{quote(branch)}"), ok=(404,))
        return None if response.status_code == 404 else response.json()["object"]["sha"]

    def read_file(self, path: str, ref: str) -> str | None:
        response = self.api.request("GET", self._repo(f"/contents/{quote(path)}"), params={"ref": ref}, ok=(404,))
        if response.status_code == 404:
            return None
        return base64.b64decode(response.json()["content"]).decode()

    # --- internals ----------------------------------------------------------------------------

    def _repo(self, path: str = "") -> str:
        return f"/repos/{self.repository}{path}"

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every page of a list endpoint, following the Link header."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: dict[str, Any] | None = {"per_page": PAGE_SIZE, **(params or {})}
        while url:
            response = self.api.request("GET", url, params=query)
            items.extend(response.json())
            url = response.links.get("next", {}).get("url")
            query = None  # the next link carries the query
        return items

    def _list_raw(self, state: str, head: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"state": state}
        if head:
            params["head"] = f"{self.owner}:{head}"
        return self._pages(self._repo("/pulls"), params)

    def _pull_request(self, raw: dict[str, Any], with_files: bool = True) -> PullRequest:
        number = int(raw["number"])
        return PullRequest(
            number=number,
            branch=(raw.get("head") or {}).get("ref", ""),
            base=(raw.get("base") or {}).get("ref", ""),
            title=raw.get("title") or "",
            body=raw.get("body") or "",
            state=_state(raw),
            files=self.files(number) if with_files else [],
            url=raw.get("html_url") or "",
            head=(raw.get("head") or {}).get("sha", ""),
            merge_commit=(raw.get("merge_commit_sha") or "") if _state(raw) == "merged" else "",
        )

    def _branch_commit(self, branch: str, base: str, files: dict[str, str], message: str) -> str:
        """One commit on top of `base` holding `files`, built with the git data API (no clone)."""
        base_sha = self.branch_sha(base)
        if base_sha is None:
            raise GitHubError(f"base branch {base!r} does not exist in {self.repository}")
        base_tree = self.api.json("GET", self._repo(f"/git/commits/{base_sha}"))["tree"]["sha"]
        entries = [{"path": path, "mode": "100644", "type": "blob", "content": text} for path, text in files.items()]
        tree = self.api.json("POST", self._repo("/git/trees"), json={"base_tree": base_tree, "tree": entries})["sha"]
        if tree == base_tree:
            raise GitHubError(f"pull request {branch!r} would change nothing: {base} already has this content")
        current = self.branch_sha(branch)
        if current:
            commit = self.api.json("GET", self._repo(f"/git/commits/{current}"))
            if commit["tree"]["sha"] == tree and [p["sha"] for p in commit.get("parents", [])] == [base_sha]:
                return current  # the branch already holds exactly this change
        made = self.api.json(
            "POST", self._repo("/git/commits"), json={"message": message, "tree": tree, "parents": [base_sha]}
        )["sha"]
        if current is None:
            self.api.json("POST", self._repo("/git/refs"), json={"ref": f"refs/heads/{branch}", "sha": made})
        else:
            self.api.json("PATCH", self._repo(f"/git/refs/heads/{quote(branch)}"), json={"sha": made, "force": True})
        return made
