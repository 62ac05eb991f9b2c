"""Pull requests on GitHub through PyGithub: the cluster form of gitops' PullRequests.

The token comes from GH_TOKEN or GITHUB_TOKEN (in CI: a GitHub App installation token from
actions/create-github-app-token, so the PRs it opens trigger workflows); GITHUB_API_URL is
honoured (GitHub Enterprise, or the emulator in tests); the repository is GITHUB_REPOSITORY or
the `origin` remote. A PR's branch is built with the git data API (tree, commit, ref), so CI
needs no clone and stores no git credentials.

Requests follow the engine's HTTP policy (cluster/http.py): (connect, read) timeouts, a
deadline per logical call, PyGithub's GithubRetry for the rate-limit 403s (primary and
secondary) and 429, and no resend of a write that may have been applied.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from github import Auth, Github, GithubException, GithubRetry, InputGitTreeElement
from github.PullRequest import PullRequest as GhPullRequest
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from .. import git as gitcmd
from ..pulls import PullRequest
from .http import (
    IDEMPOTENT,
    SETTINGS,
    ClusterCallError,
    DeadlineExceeded,
    DeadlineTimeout,
    Retry,
    Timeouts,
    deadline,
    describe_failure,
    retry_policy,
)

DEFAULT_API_URL = "https://api.github.com"
PAGE_SIZE = 100
# GitHub asks integrators to space writes by a second to stay under the secondary rate limit.
SECONDS_BETWEEN_WRITES = 1.0
RATE_LIMIT_STATUSES = (403, 429)
T = TypeVar("T")


class GitHubError(ClusterCallError):
    """GitHub is not configured or refused a pull-request operation; names env, server and repo."""


class _GitHubTimeout(int, DeadlineTimeout):
    """PyGithub asserts an int `timeout`; requests hands a urllib3 Timeout through unchanged:
    this is both, so PyGithub's requests get our (connect, read) timeouts capped by the deadline."""

    def __new__(cls, timeouts: Timeouts) -> _GitHubTimeout:
        return super().__new__(cls, math.ceil(timeouts.read_s))

    def __init__(self, timeouts: Timeouts) -> None:
        DeadlineTimeout.__init__(self, connect=timeouts.connect_s, read=timeouts.read_s)


class _GitHubRetry(GithubRetry):
    """GithubRetry (rate-limit 403s), narrowed: a write is resent only when GitHub refused it
    unprocessed (403 rate limit, 429), never after a 5xx or a read timeout."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() not in IDEMPOTENT and status_code not in RATE_LIMIT_STATUSES:
            return False
        return super().is_retry(method, status_code, has_retry_after)

    _content: bytes | None = None

    def get_content(self, resp, url):  # noqa: ANN001 - GithubRetry's hook: keep what it read
        self._content = GithubRetry.get_content(resp, url)
        return self._content

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # noqa: ANN001
        # a write whose answer never came may have been applied: never resent
        if isinstance(error, (ReadTimeoutError, ProtocolError)) and (method or "").upper() not in IDEMPOTENT:
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _state(pr: GhPullRequest) -> str:
    raw = pr.raw_data
    return "merged" if raw.get("merged_at") or raw.get("merged") else raw.get("state", "open")


def repository_from_environment(cwd: str | os.PathLike | None = None) -> str:
    """owner/repo from GITHUB_REPOSITORY, else from the `origin` remote's URL."""
    repo = os.environ.get("GITHUB_REPOSITORY", "").strip()
    if repo:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise GitHubError(f"GITHUB_REPOSITORY={repo!r} is not of the form owner/repo")
        return repo
    result = gitcmd.probe(cwd or ".", "remote", "get-url", "origin")
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
    """gitops.PullRequests on GitHub, plus the sticky comment, labels, reviews and contents CI uses."""

    def __init__(
        self,
        env: str,
        repository: str | None = None,
        token: str | None = None,
        api_url: str | None = None,
        timeouts: Timeouts | None = None,
        retry: Retry | None = None,
        merge_method: str = "squash",
        seconds_between_writes: float | None = SECONDS_BETWEEN_WRITES,
    ):
        self.env = env
        self.repository = repository or repository_from_environment()
        self.owner = self.repository.split("/", 1)[0]
        self.merge_method = merge_method
        self.api_url = (api_url or os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.timeouts = timeouts or Timeouts()
        retries = retry_policy(
            retry or Retry(),
            base=_GitHubRetry,
            status_forcelist=[429, 502, 503, 504],  # GithubRetry adds 403 and retries only rate-limit 403s
            allowed_methods=IDEMPOTENT | {"POST", "PATCH"},
        )
        self.github = Github(
            auth=Auth.Token(token or token_from_environment()),  # "Authorization: token <installation token>"
            base_url=self.api_url,
            timeout=_GitHubTimeout(self.timeouts),
            retry=retries,
            per_page=PAGE_SIZE,
            seconds_between_requests=None,
            seconds_between_writes=seconds_between_writes,
        )
        self._repo: Any = None

    @classmethod
    def for_config(cls, cfg) -> GitHubPullRequests:
        """The factory gitops.BACKENDS["github"] calls: promotion and rollback PRs move production."""
        env = cfg.env("production") if hasattr(cfg, "env") else None
        return cls("production", repository=repository_from_environment(cfg.root), timeouts=Timeouts.of(env or cfg))

    # --- the PullRequests protocol ----------------------------------------------------------

    def find_open(self, branch: str) -> PullRequest | None:
        found = self._open_with_head(branch)
        return self._pull_request(found[0]) if found else None

    def list(self, state: str | None = None) -> list[PullRequest]:
        if state is not None and state not in ("open", "merged", "closed"):
            raise GitHubError(f"pull request state {state!r} is unknown; expected open, merged or closed")
        wanted = "open" if state == "open" else "all"
        raw = self._call("listing pull requests", lambda: list(self.repo.get_pulls(state=wanted)))
        pulls = [self._pull_request(item, with_files=False) for item in raw]
        return sorted((pr for pr in pulls if state is None or pr.state == state), key=lambda pr: pr.number)

    def get(self, number: int) -> PullRequest:
        return self._pull_request(self._get_raw(number))

    def open_or_update(
        self, branch: str, base: str, title: str, body: str, files_changed: dict[str, str]
    ) -> PullRequest:
        """Point `branch` at one commit = `base` + `files_changed`, then open or update its PR.

        A rerun with the same content moves nothing and edits the one open PR."""
        if not files_changed:
            raise GitHubError(f"pull request {branch!r} changes no file; pass at least one path and its content")
        head = self._branch_commit(branch, base, files_changed, title)
        existing = self._open_with_head(branch)
        if existing:
            raw = existing[0]
            self._call(f"editing pull request #{raw.number}", raw.edit, title=title, body=body)
        else:
            try:
                raw = self._call(
                    f"opening a pull request from {branch}",
                    self.repo.create_pull,
                    base=base,
                    head=branch,
                    title=title,
                    body=body,
                )
            except GitHubError as exc:
                # 422 "A pull request already exists": opened concurrently; converge on it.
                again = self._open_with_head(branch) if exc.status == 422 else []
                if not again:
                    raise
                raw = again[0]
                self._call(f"editing pull request #{raw.number}", raw.edit, title=title, body=body)
        pr = self._pull_request(self._get_raw(raw.number))
        pr.head = head
        return pr

    def merge(self, number: int) -> PullRequest:
        """Merge on GitHub; merging an already merged PR returns it unchanged."""
        raw = self._get_raw(number)
        state = _state(raw)
        if state == "closed":
            raise GitHubError(f"pull request #{number} is closed; open a new one instead of merging it")
        if state == "open":
            # sha: GitHub refuses (409) if the branch moved after the PR was read
            self._call(f"merging pull request #{number}", raw.merge, merge_method=self.merge_method, sha=raw.head.sha)
        return self.get(number)

    def close(self, number: int) -> PullRequest:
        raw = self._get_raw(number)
        state = _state(raw)
        if state == "merged":
            raise GitHubError(f"pull request #{number} is already merged; revert it with a new pull request")
        if state == "open":
            self._call(f"closing pull request #{number}", raw.edit, state="closed")
        return self.get(number)

    # --- beyond the protocol ----------------------------------------------------------------

    def files(self, number: int) -> list[str]:
        """Paths the PR changes (a rename lists both its old and new path)."""
        raw = self._get_raw(number)
        return self._files(raw)

    def upsert_comment(self, number: int, body: str, marker: str) -> tuple[int, bool]:
        """Create or edit the one comment carrying the hidden `marker`; returns (comment id, created)."""
        tag = f"<!-- {marker} -->"
        text = body if tag in body else f"{tag}\n{body}"
        raw = self._get_raw(number)
        comments = self._call(f"reading the comments of #{number}", lambda: list(raw.get_issue_comments()))
        for comment in comments:
            if tag in (comment.body or ""):
                if comment.body != text:
                    self._call(f"editing comment {comment.id} on #{number}", comment.edit, text)
                return int(comment.id), False
        made = self._call(f"commenting on #{number}", raw.create_issue_comment, text)
        return int(made.id), True

    def labels(self, number: int) -> list[str]:
        raw = self._get_raw(number)
        return sorted(label.name for label in self._call(f"reading labels of #{number}", lambda: list(raw.labels)))

    def add_labels(self, number: int, *labels: str) -> list[str]:
        raw = self._get_raw(number)
        self._call(f"labelling #{number}", raw.add_to_labels, *labels)
        return self.labels(number)

    def remove_label(self, number: int, label: str) -> list[str]:
        raw = self._get_raw(number)
        if label in {item.name for item in raw.labels}:
            self._call(f"removing label {label!r} from #{number}", raw.remove_from_labels, label)
        return self.labels(number)

    def reviews(self, number: int) -> dict[str, str]:
        """Each reviewer's latest review state (APPROVED, CHANGES_REQUESTED, COMMENTED)."""
        raw = self._get_raw(number)
        latest: dict[str, str] = {}
        for review in self._call(f"reading reviews of #{number}", lambda: list(raw.get_reviews())):
            latest[review.user.login] = review.state
        return latest

    def branch_sha(self, branch: str) -> str | None:
        try:
            return self._call(f"reading branch {branch}", self.repo.get_git_ref, f"heads/{branch}").object.sha
        except GitHubError as exc:
            if exc.status == 404:
                return None
            raise

    def read_file(self, path: str, ref: str) -> str | None:
        """The text of `path` at `ref`, or None when it does not exist there."""
        try:
            found = self._call(f"reading {path} at {ref}", self.repo.get_contents, path, ref=ref)
        except GitHubError as exc:
            if exc.status == 404:
                return None
            raise
        if isinstance(found, list):
            raise GitHubError(f"{path} at {ref} in {self.repository} is a directory, not a file")
        return found.decoded_content.decode()

    # --- internals ----------------------------------------------------------------------------

    @property
    def repo(self):
        if self._repo is None:
            self._repo = self._call("opening the repository", self.github.get_repo, self.repository)
        return self._repo

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One logical GitHub call inside the deadline; a failure is one sentence."""
        where = f"GitHub ({self.env}) {self.api_url}: {what} in {self.repository}"
        with deadline(self.timeouts.deadline_s):
            try:
                return fn(*args, **kwargs)
            except GithubException as exc:
                raise GitHubError(f"{where} failed: {_describe(exc, self.timeouts)}", status=exc.status) from exc
            except (requests.RequestException, DeadlineExceeded) as exc:
                raise GitHubError(f"{where} failed: {describe_failure(exc, self.timeouts)}") from exc

    def _get_raw(self, number: int) -> GhPullRequest:
        return self._call(f"reading pull request #{number}", self.repo.get_pull, int(number))

    def _open_with_head(self, branch: str) -> list[GhPullRequest]:
        head = f"{self.owner}:{branch}"
        return self._call(
            f"looking up the open pull request of {branch}", lambda: list(self.repo.get_pulls(state="open", head=head))
        )

    def _files(self, raw: GhPullRequest) -> list[str]:
        paths: list[str] = []
        for item in self._call(f"listing the files of #{raw.number}", lambda: list(raw.get_files())):
            if item.previous_filename:
                paths.append(item.previous_filename)
            paths.append(item.filename)
        return paths

    def _pull_request(self, raw: GhPullRequest, with_files: bool = True) -> PullRequest:
        data = raw.raw_data
        state = _state(raw)
        return PullRequest(
            number=int(data["number"]),
            branch=(data.get("head") or {}).get("ref", ""),
            base=(data.get("base") or {}).get("ref", ""),
            title=data.get("title") or "",
            body=data.get("body") or "",
            state=state,
            files=self._files(raw) if with_files else [],
            url=data.get("html_url") or "",
            head=(data.get("head") or {}).get("sha", ""),
            merge_commit=(data.get("merge_commit_sha") or "") if state == "merged" else "",
        )

    def record_branch(self, branch: str, base_sha: str, files: dict[str, str], message: str) -> str:
        """Point `branch` (an environment branch Argo CD follows, e.g. env/staging) at `base_sha` +
        `files`, force-moved; returns the commit. The same content on the same base moves nothing."""
        repo = self.repo
        base_commit = self._call(f"reading commit {base_sha[:12]}", repo.get_git_commit, base_sha)
        entries = [InputGitTreeElement(path, "100644", "blob", content=text) for path, text in files.items()]
        tree = self._call("writing a tree", repo.create_git_tree, entries, base_commit.tree)
        current = self.branch_sha(branch)
        target = base_sha if tree.sha == base_commit.tree.sha else None
        if target is None and current:
            commit = self._call(f"reading commit {current[:12]}", repo.get_git_commit, current)
            if commit.tree.sha == tree.sha and [p.sha for p in commit.parents] == [base_sha]:
                return current
        if target is None:
            target = self._call("writing a commit", repo.create_git_commit, message, tree, [base_commit]).sha
        if current is None:
            self._call(f"creating branch {branch}", repo.create_git_ref, f"refs/heads/{branch}", target)
        elif current != target:
            ref = self._call(f"reading branch {branch}", repo.get_git_ref, f"heads/{branch}")
            self._call(f"moving branch {branch}", ref.edit, target, force=True)
        return target

    def _branch_commit(self, branch: str, base: str, files: dict[str, str], message: str) -> str:
        """One commit on top of `base` holding `files`, built with the git data API (no clone)."""
        base_sha = self.branch_sha(base)
        if base_sha is None:
            raise GitHubError(f"base branch {base!r} does not exist in {self.repository}")
        repo = self.repo
        base_commit = self._call(f"reading commit {base_sha[:12]}", repo.get_git_commit, base_sha)
        entries = [InputGitTreeElement(path, "100644", "blob", content=text) for path, text in files.items()]
        tree = self._call("writing a tree", repo.create_git_tree, entries, base_commit.tree)
        if tree.sha == base_commit.tree.sha:
            raise GitHubError(f"pull request {branch!r} would change nothing: {base} already has this content")
        current = self.branch_sha(branch)
        if current:
            commit = self._call(f"reading commit {current[:12]}", repo.get_git_commit, current)
            if commit.tree.sha == tree.sha and [p.sha for p in commit.parents] == [base_sha]:
                return current  # the branch already holds exactly this change
        made = self._call("writing a commit", repo.create_git_commit, message, tree, [base_commit])
        if current is None:
            self._call(f"creating branch {branch}", repo.create_git_ref, f"refs/heads/{branch}", made.sha)
        else:
            ref = self._call(f"reading branch {branch}", repo.get_git_ref, f"heads/{branch}")
            self._call(f"moving branch {branch}", ref.edit, made.sha, force=True)
        return made.sha


def _describe(exc: GithubException, timeouts: Timeouts) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    message = str(data.get("message") or exc.data or "no message")
    errors = data.get("errors")
    if errors:
        details = [e.get("message") or f"{e.get('field')} {e.get('code')}" for e in errors if isinstance(e, dict)]
        message = f"{message}: {'; '.join(str(d) for d in details)}" if details else message
    text = f"{exc.status} {message}"
    if exc.status in RATE_LIMIT_STATUSES and ("rate limit" in message.lower() or exc.status == 429):
        wait = (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After")
        asked = f" (GitHub asked to wait {wait}s)" if wait else ""
        text += f"{asked}; retried within {timeouts.deadline_s:g}s: raise timeouts.deadline_s in {SETTINGS}"
    return text
