"""A GitHub REST API (v3) emulator over a real bare git repository, on 127.0.0.1.

What PyGithub calls for pull-request work, with the JSON shapes of GitHub's REST docs:
repository, branches and git refs, git trees/commits (the data API), contents, pulls (list,
create, get, update, merge, files), reviews, issue comments and labels. Branches are real refs
of the bare repository (a `git push` to it is seen at once); a merge is a real `git merge` in
a scratch worktree pushed to the bare repository; a PR's files come from `git diff`.

Authentication: `Authorization: token <x>` or `Bearer <x>` must name a configured token
(the App installation token, or a reviewer's). Every request is recorded (method, path,
token, status) for assertions. `fail_next` makes the next matching calls answer as GitHub
does under its rate limits.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim import LocalServer, Request

DOCS = "https://docs.github.com/rest"
APP_LOGIN = "mlrail-app[bot]"
BOT_IDENTITY = {"GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com"}
SECONDARY_RATE_LIMIT = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID."
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git(repo: Path, *args: str, input_text: str | None = None, env: dict[str, str] | None = None) -> str:
    """git against the bare repository (or a worktree); raises GitFailed with git's last line."""
    result = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
    )
    if result.returncode != 0:
        raise GitFailed((result.stderr or result.stdout).strip() or f"git {args[0]} failed")
    return result.stdout.strip()


class GitFailed(Exception):
    pass


def seed_repository(bare: Path, files: dict[str, str], branch: str = "main") -> str:
    """A bare repository whose `branch` holds `files` in one commit; returns that commit."""
    bare.mkdir(parents=True, exist_ok=True)
    git(bare, "init", "--quiet", "--bare", f"--initial-branch={branch}")
    index = Path(tempfile.mkdtemp()) / "index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        for path, text in files.items():
            blob = git(bare, "hash-object", "-w", "--stdin", input_text=text)
            git(bare, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git(bare, "write-tree", env=env)
    finally:
        shutil.rmtree(index.parent, ignore_errors=True)
    commit = git(bare, "commit-tree", tree, "-m", "Initial commit", env=_identity("seed"))
    git(bare, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def _identity(login: str) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": login, "GIT_AUTHOR_EMAIL": f"{login}@users.noreply.github.com", **BOT_IDENTITY}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    token: str | None
    status: int = 0


@dataclass
class _Pull:
    number: int
    title: str
    body: str
    head: str
    base: str
    user: str
    created_at: str
    state: str = "open"
    draft: bool = False
    head_sha: str = ""  # frozen when the PR is merged or closed
    base_sha: str = ""
    merged_at: str | None = None
    closed_at: str | None = None
    merge_commit_sha: str | None = None
    merged_by: str | None = None
    labels: list[str] = field(default_factory=list)
    updated_at: str = ""


class GitHubEmulator:
    """One repository `owner/name` served over `bare`; use as a context manager."""

    def __init__(
        self,
        bare: Path,
        repository: str,
        tokens: dict[str, str],
        page_size: int = 100,
        required_approvals: int = 0,
        merge_methods: tuple[str, ...] = ("merge", "squash"),
    ):
        self.bare = Path(bare)
        self.repository = repository
        self.owner, self.name = repository.split("/", 1)
        self.tokens = dict(tokens)  # token -> login
        self.page_size = page_size  # the most GitHub returns per page (per_page is capped by it)
        self.required_approvals = required_approvals
        self.merge_methods = merge_methods
        self.requests: list[Recorded] = []
        self.pulls: dict[int, _Pull] = {}
        self.comments: dict[int, dict[str, Any]] = {}
        self.reviews: dict[int, list[dict[str, Any]]] = {}
        self.label_ids: dict[str, int] = {}
        self.failures: list[tuple[re.Pattern[str], str, int, dict[str, str], dict[str, Any]]] = []
        self._ids = itertools.count(1001)
        self._lock = threading.RLock()
        self.server = LocalServer(self.route)

    @classmethod
    def app_token(cls, login: str = APP_LOGIN) -> dict[str, str]:
        return {"ghs_emulated-installation-token": login}

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> GitHubEmulator:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def repo_url(self) -> str:
        return f"{self.url}/repos/{self.repository}"

    # --- test controls ------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int = 403,
        headers: dict[str, str] | None = None,
        message: str = SECONDARY_RATE_LIMIT,
        times: int = 1,
    ) -> None:
        """The next `times` calls matching answer `status` with `message` (e.g. the secondary rate limit)."""
        body = {"message": message, "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api"}
        for _ in range(times):
            self.failures.append((re.compile(path_pattern), method.upper(), status, dict(headers or {}), body))

    def calls(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and re.search(pattern, r.path) is not None
        ]

    def sha(self, ref: str) -> str | None:
        try:
            return git(self.bare, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except GitFailed:
            return None

    def show(self, ref: str, path: str) -> str | None:
        """The file's exact text at `ref`, or None."""
        result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.bare, capture_output=True, check=False)
        return result.stdout.decode() if result.returncode == 0 else None

    # --- dispatch -------------------------------------------------------------------------------

    def route(self, request: Request):
        token = _token(request.headers)
        recorded = Recorded(request.method, request.path, request.query, token)
        with self._lock:
            self.requests.append(recorded)
            status, headers, body = self._route(request, token)
        recorded.status = status
        return status, {"X-GitHub-Api-Version-Selected": "2022-11-28", **headers}, body

    def _route(self, request: Request, token: str | None):  # noqa: C901 - one branch per documented endpoint
        if token is None:
            return _error(401, "Requires authentication")
        if token not in self.tokens:
            return _error(401, "Bad credentials")
        user = self.tokens[token]
        for index, (pattern, method, status, headers, body) in enumerate(self.failures):
            if method == request.method and pattern.search(request.path):
                del self.failures[index]
                return status, headers, body
        prefix = f"/repos/{self.repository}"
        if request.path == prefix and request.method == "GET":
            return 200, {}, self._repo_json()
        if not request.path.startswith(prefix + "/"):
            return _error(404, "Not Found")
        path, method = request.path[len(prefix) :], request.method
        try:
            if m := re.fullmatch(r"/branches/(.+)", path):
                return self._branch(m[1])
            if m := re.fullmatch(r"/git/ref/(heads/.+)", path):
                return self._get_ref(m[1])
            if path == "/git/refs" and method == "POST":
                return self._create_ref(request.json())
            if (m := re.fullmatch(r"/git/refs/(heads/.+)", path)) and method == "PATCH":
                return self._update_ref(m[1], request.json())
            if (m := re.fullmatch(r"/git/commits/([0-9a-f]{40})", path)) and method == "GET":
                return self._get_commit(m[1])
            if path == "/git/commits" and method == "POST":
                return self._create_commit(request.json(), user)
            if path == "/git/trees" and method == "POST":
                return self._create_tree(request.json())
            if (m := re.fullmatch(r"/contents/(.*)", path)) and method == "GET":
                return self._contents(m[1], request.arg("ref"))
            if path == "/pulls" and method == "GET":
                return self._list_pulls(request)
            if path == "/pulls" and method == "POST":
                return self._create_pull(request.json(), user)
            if m := re.fullmatch(r"/pulls/(\d+)", path):
                pr = self.pulls.get(int(m[1]))
                if pr is None:
                    return _error(404, "Not Found")
                if method == "PATCH":
                    return self._update_pull(pr, request.json())
                return 200, {}, self._pull_json(pr)
            if m := re.fullmatch(r"/pulls/(\d+)/(files|merge|reviews)", path):
                pr = self.pulls.get(int(m[1]))
                if pr is None:
                    return _error(404, "Not Found")
                if m[2] == "files":
                    return self._page(request, self._files(pr))
                if m[2] == "merge" and method == "PUT":
                    return self._merge(pr, request.json() or {}, user)
                if m[2] == "merge":
                    return (204, {}, None) if pr.merged_at else (404, {}, None)
                if method == "POST":
                    return self._review(pr, request.json() or {}, user)
                return self._page(request, self.reviews.get(pr.number, []))
            if m := re.fullmatch(r"/issues/(\d+)/comments", path):
                number = int(m[1])
                if number not in self.pulls:
                    return _error(404, "Not Found")
                if method == "POST":
                    return self._comment(number, request.json()["body"], user)
                ours = [c for c in self.comments.values() if c["_issue"] == number]
                return self._page(request, [self._public(c) for c in ours])
            if (m := re.fullmatch(r"/issues/comments/(\d+)", path)) and method == "PATCH":
                comment = self.comments.get(int(m[1]))
                if comment is None:
                    return _error(404, "Not Found")
                comment.update(body=request.json()["body"], updated_at=_now())
                return 200, {}, self._public(comment)
            if m := re.fullmatch(r"/issues/(\d+)/labels(?:/(.+))?", path):
                pr = self.pulls.get(int(m[1]))
                if pr is None:
                    return _error(404, "Not Found")
                return self._labels(pr, method, m[2], request)
        except GitFailed as exc:
            return _error(422, f"git: {exc}")
        return _error(404, "Not Found")

    # --- shapes -----------------------------------------------------------------------------------

    def _user(self, login: str) -> dict[str, Any]:
        kind = "Bot" if login.endswith("[bot]") else "User"
        return {"login": login, "id": abs(hash(login)) % 10**7, "type": kind, "url": f"{self.url}/users/{login}"}

    def _repo_json(self) -> dict[str, Any]:
        return {
            "id": 4242,
            "node_id": "R_emulated",
            "name": self.name,
            "full_name": self.repository,
            "owner": {**self._user(self.owner), "type": "Organization"},
            "private": True,
            "html_url": f"https://github.com/{self.repository}",
            "url": self.repo_url,
            "default_branch": "main",
            "permissions": {"admin": False, "push": True, "pull": True},
            "allow_merge_commit": "merge" in self.merge_methods,
            "allow_squash_merge": "squash" in self.merge_methods,
            "allow_rebase_merge": "rebase" in self.merge_methods,
        }

    def _ref_json(self, ref: str, sha: str) -> dict[str, Any]:
        return {
            "ref": f"refs/{ref}",
            "node_id": f"REF_{sha[:12]}",
            "url": f"{self.repo_url}/git/refs/{ref}",
            "object": {"sha": sha, "type": "commit", "url": f"{self.repo_url}/git/commits/{sha}"},
        }

    def _commit_json(self, sha: str) -> dict[str, Any]:
        raw = git(self.bare, "cat-file", "commit", sha)
        header, _, message = raw.partition("\n\n")
        fields = [line.split(" ", 1) for line in header.splitlines()]
        tree = next(value for key, value in fields if key == "tree")
        parents = [value for key, value in fields if key == "parent"]
        author = next(value for key, value in fields if key == "author")
        name = author.split(" <", 1)[0]
        return {
            "sha": sha,
            "node_id": f"C_{sha[:12]}",
            "url": f"{self.repo_url}/git/commits/{sha}",
            "html_url": f"https://github.com/{self.repository}/commit/{sha}",
            "author": {"name": name, "email": author.split("<", 1)[1].split(">", 1)[0], "date": _now()},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "date": _now()},
            "message": message.rstrip("\n"),
            "tree": {"sha": tree, "url": f"{self.repo_url}/git/trees/{tree}"},
            "parents": [{"sha": p, "url": f"{self.repo_url}/git/commits/{p}"} for p in parents],
        }

    def _pull_json(self, pr: _Pull) -> dict[str, Any]:
        head_sha = pr.head_sha if pr.state != "open" else (self.sha(f"refs/heads/{pr.head}") or pr.head_sha)
        base_sha = pr.base_sha if pr.state != "open" else (self.sha(f"refs/heads/{pr.base}") or pr.base_sha)
        url = f"{self.repo_url}/pulls/{pr.number}"
        repo = self._repo_json()
        return {
            "url": url,
            "id": 50000 + pr.number,
            "node_id": f"PR_{pr.number}",
            "html_url": f"https://github.com/{self.repository}/pull/{pr.number}",
            "issue_url": f"{self.repo_url}/issues/{pr.number}",
            "comments_url": f"{self.repo_url}/issues/{pr.number}/comments",
            "number": pr.number,
            "state": "closed" if pr.state != "open" else "open",
            "locked": False,
            "title": pr.title,
            "body": pr.body,
            "user": self._user(pr.user),
            "labels": [self._label_json(name) for name in pr.labels],
            "created_at": pr.created_at,
            "updated_at": pr.updated_at or pr.created_at,
            "closed_at": pr.closed_at,
            "merged_at": pr.merged_at,
            "merge_commit_sha": pr.merge_commit_sha,
            "draft": pr.draft,
            "head": {"label": f"{self.owner}:{pr.head}", "ref": pr.head, "sha": head_sha, "repo": repo},
            "base": {"label": f"{self.owner}:{pr.base}", "ref": pr.base, "sha": base_sha, "repo": repo},
            "merged": pr.merged_at is not None,
            "mergeable": None if pr.state != "open" else self._mergeable(pr),
            "merged_by": self._user(pr.merged_by) if pr.merged_by else None,
            "comments": sum(1 for c in self.comments.values() if c["_issue"] == pr.number),
            "changed_files": len(self._files(pr)),
        }

    def _label_json(self, name: str) -> dict[str, Any]:
        label_id = self.label_ids.setdefault(name, next(self._ids))
        return {
            "id": label_id,
            "node_id": f"LA_{label_id}",
            "url": f"{self.repo_url}/labels/{name}",
            "name": name,
            "color": "ededed",
            "default": False,
            "description": None,
        }

    def _public(self, comment: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in comment.items() if not k.startswith("_")}

    def _page(self, request: Request, items: list) -> tuple[int, dict[str, str], list]:
        per_page = max(1, min(int(request.arg("per_page", "30")), self.page_size))
        page = max(1, int(request.arg("page", "1")))
        headers = {}
        last = max(1, -(-len(items) // per_page))
        if page < last:
            query = "&".join(f"{k}={v[0]}" for k, v in request.query.items() if k != "page")
            base = f"{self.url}{request.path}?{query}&" if query else f"{self.url}{request.path}?"
            headers["Link"] = f'<{base}page={page + 1}>; rel="next", <{base}page={last}>; rel="last"'
        return 200, headers, items[(page - 1) * per_page : page * per_page]

    # --- refs, commits, trees, contents ----------------------------------------------------------

    def _branch(self, name: str):
        sha = self.sha(f"refs/heads/{name}")
        if sha is None:
            return _error(404, "Branch not found")
        return (
            200,
            {},
            {
                "name": name,
                "commit": {"sha": sha, "url": f"{self.repo_url}/commits/{sha}"},
                "protected": name == "main",
            },
        )

    def _get_ref(self, ref: str):
        sha = self.sha(f"refs/{ref}")
        return (200, {}, self._ref_json(ref, sha)) if sha else _error(404, "Not Found")

    def _create_ref(self, data: dict[str, Any]):
        ref, sha = data.get("ref", ""), data.get("sha", "")
        if not ref.startswith("refs/heads/") or self.sha(sha) is None:
            return _error(422, "Reference update failed")
        if self.sha(ref):
            return _error(422, "Reference already exists")
        git(self.bare, "update-ref", ref, sha, "")  # "" = must not exist yet
        return 201, {}, self._ref_json(ref.removeprefix("refs/"), sha)

    def _update_ref(self, ref: str, data: dict[str, Any]):
        current, new = self.sha(f"refs/{ref}"), data.get("sha", "")
        if current is None:
            return _error(422, "Reference does not exist")
        if self.sha(new) is None:
            return _error(422, "Object does not exist")
        if not data.get("force"):
            try:
                git(self.bare, "merge-base", "--is-ancestor", current, new)
            except GitFailed:
                return _error(422, "Update is not a fast forward")
        git(self.bare, "update-ref", f"refs/{ref}", new, current)
        return 200, {}, self._ref_json(ref, new)

    def _get_commit(self, sha: str):
        try:
            return 200, {}, self._commit_json(sha)
        except GitFailed:
            return _error(404, "Not Found")

    def _create_commit(self, data: dict[str, Any], user: str):
        args = ["commit-tree", data["tree"], "-m", data.get("message") or ""]
        for parent in data.get("parents", []):
            args += ["-p", parent]
        sha = git(self.bare, *args, env=_identity(user))
        return 201, {}, self._commit_json(sha)

    def _create_tree(self, data: dict[str, Any]):
        index = Path(tempfile.mkdtemp()) / "index"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if data.get("base_tree"):
                git(self.bare, "read-tree", data["base_tree"], env=env)
            for entry in data.get("tree", []):
                if "content" in entry:
                    blob = git(self.bare, "hash-object", "-w", "--stdin", input_text=entry["content"])
                elif entry.get("sha") is None:
                    git(self.bare, "update-index", "--force-remove", entry["path"], env=env)
                    continue
                else:
                    blob = entry["sha"]
                git(
                    self.bare,
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    f"{entry['mode']},{blob},{entry['path']}",
                    env=env,
                )
            sha = git(self.bare, "write-tree", env=env)
        finally:
            shutil.rmtree(index.parent, ignore_errors=True)
        return 201, {}, {"sha": sha, "url": f"{self.repo_url}/git/trees/{sha}", "tree": [], "truncated": False}

    def _contents(self, path: str, ref: str | None):
        ref = ref or "main"
        path = path.strip("/")
        spec = f"{ref}:{path}"
        try:
            kind = git(self.bare, "cat-file", "-t", spec)
        except GitFailed:
            return _error(404, "Not Found")
        if kind == "tree":
            entries = []
            for line in git(self.bare, "ls-tree", spec).splitlines():
                meta, name = line.split("\t", 1)
                _, otype, sha = meta.split()
                child = f"{path}/{name}" if path else name
                entries.append(self._content_entry(child, sha, "file" if otype == "blob" else "dir", ref))
            return 200, {}, entries
        sha = git(self.bare, "rev-parse", spec)
        content = subprocess.run(
            ["git", "cat-file", "blob", sha], cwd=self.bare, capture_output=True, check=True
        ).stdout
        entry = self._content_entry(path, sha, "file", ref)
        encoded = base64.encodebytes(content).decode()  # GitHub wraps base64 at 60 columns with newlines
        return 200, {}, {**entry, "size": len(content), "encoding": "base64", "content": encoded}

    def _content_entry(self, path: str, sha: str, kind: str, ref: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "url": f"{self.repo_url}/contents/{path}?ref={ref}",
            "html_url": f"https://github.com/{self.repository}/blob/{ref}/{path}",
            "git_url": f"{self.repo_url}/git/blobs/{sha}",
            "download_url": None,
        }

    # --- pulls ---------------------------------------------------------------------------------------

    def _list_pulls(self, request: Request):
        state = request.arg("state", "open")
        head, base = request.arg("head"), request.arg("base")
        if head and ":" not in head:
            head = f"{self.owner}:{head}"
        found = [
            pr
            for pr in self.pulls.values()
            if (state == "all" or (pr.state == "open") == (state == "open"))
            and (head is None or head == f"{self.owner}:{pr.head}")
            and (base is None or base == pr.base)
        ]
        reverse = request.arg("direction", "desc") == "desc"  # GitHub: newest first by default
        found.sort(key=lambda pr: pr.number, reverse=reverse)
        return self._page(request, [self._pull_json(pr) for pr in found])

    def _create_pull(self, data: dict[str, Any], user: str):
        head, base = data.get("head", ""), data.get("base", "")
        head = head.split(":", 1)[1] if ":" in head else head
        invalid = [
            {"resource": "PullRequest", "field": name, "code": "invalid"}
            for name, branch in (("head", head), ("base", base))
            if self.sha(f"refs/heads/{branch}") is None
        ]
        if invalid:
            return 422, {}, {"message": "Validation Failed", "errors": invalid, "documentation_url": DOCS}
        if any(pr.head == head and pr.base == base and pr.state == "open" for pr in self.pulls.values()):
            errors = [
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {self.owner}:{head}.",
                }
            ]
            return 422, {}, {"message": "Validation Failed", "errors": errors, "documentation_url": DOCS}
        if not git(self.bare, "rev-list", f"refs/heads/{base}..refs/heads/{head}"):
            errors = [{"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"}]
            return 422, {}, {"message": "Validation Failed", "errors": errors, "documentation_url": DOCS}
        number = len(self.pulls) + 1
        pr = _Pull(
            number,
            data.get("title", ""),
            data.get("body") or "",
            head,
            base,
            user,
            _now(),
            draft=bool(data.get("draft")),
        )
        self.pulls[number] = pr
        return 201, {}, self._pull_json(pr)

    def _update_pull(self, pr: _Pull, data: dict[str, Any]):
        if "title" in data:
            pr.title = data["title"]
        if "body" in data:
            pr.body = data["body"] or ""
        if data.get("state") == "closed" and pr.state == "open":
            pr.head_sha = self.sha(f"refs/heads/{pr.head}") or pr.head_sha
            pr.base_sha = self.sha(f"refs/heads/{pr.base}") or pr.base_sha
            pr.state, pr.closed_at = "closed", _now()
        elif data.get("state") == "open" and pr.state == "closed" and not pr.merged_at:
            pr.state, pr.closed_at = "open", None
        pr.updated_at = _now()
        return 200, {}, self._pull_json(pr)

    def _files(self, pr: _Pull) -> list[dict[str, Any]]:
        head = pr.head_sha if pr.state != "open" else self.sha(f"refs/heads/{pr.head}")
        base = pr.base_sha if pr.state != "open" else self.sha(f"refs/heads/{pr.base}")
        if not head or not base:
            return []
        merge_base = git(self.bare, "merge-base", base, head)
        numstat = {}
        for line in git(self.bare, "diff", "--numstat", "--no-renames", merge_base, head).splitlines():
            added, deleted, name = line.split("\t", 2)
            numstat[name] = (0 if added == "-" else int(added), 0 if deleted == "-" else int(deleted))  # "-": binary
        files = []
        for line in git(self.bare, "diff", "--name-status", "-M", merge_base, head).splitlines():
            parts = line.split("\t")
            code = parts[0][0]
            name = parts[-1]
            added, deleted = numstat.get(name, (0, 0))
            item = {
                "sha": git(self.bare, "rev-parse", f"{head}:{name}") if code != "D" else None,
                "filename": name,
                "status": {"A": "added", "M": "modified", "D": "removed", "R": "renamed"}.get(code, "changed"),
                "additions": added,
                "deletions": deleted,
                "changes": added + deleted,
                "blob_url": f"https://github.com/{self.repository}/blob/{head}/{name}",
                "raw_url": f"https://github.com/{self.repository}/raw/{head}/{name}",
                "contents_url": f"{self.repo_url}/contents/{name}?ref={head}",
            }
            if code == "R":
                item["previous_filename"] = parts[1]
            files.append(item)
        return files

    def _mergeable(self, pr: _Pull) -> bool:
        head, base = self.sha(f"refs/heads/{pr.head}"), self.sha(f"refs/heads/{pr.base}")
        if not head or not base:
            return False
        try:
            git(self.bare, "merge-tree", "--write-tree", base, head)
        except GitFailed:
            return False
        return True

    def _approvals(self, pr: _Pull, head_sha: str) -> int:
        latest: dict[str, dict[str, Any]] = {}
        for review in self.reviews.get(pr.number, []):
            latest[review["user"]["login"]] = review
        return sum(1 for r in latest.values() if r["state"] == "APPROVED" and r["commit_id"] == head_sha)

    def _merge(self, pr: _Pull, data: dict[str, Any], user: str):
        if pr.state != "open":
            return _error(405, "Pull Request is not mergeable")
        head = self.sha(f"refs/heads/{pr.head}")
        base = self.sha(f"refs/heads/{pr.base}")
        if data.get("sha") and data["sha"] != head:
            return _error(409, "Head branch was modified. Review and try the merge again.")
        method = data.get("merge_method", "merge")
        if method not in self.merge_methods:
            return _error(405, f"{method.capitalize()} merges are not allowed on this repository.")
        if self._approvals(pr, head) < self.required_approvals:
            return _error(
                405, f"At least {self.required_approvals} approving review is required by reviewers with write access."
            )
        scratch = Path(tempfile.mkdtemp(prefix="github-merge-"))
        worktree = scratch / "tree"
        env = _identity(pr.user)
        try:
            git(self.bare, "worktree", "add", "--quiet", "--detach", str(worktree), base)
            try:
                if method == "squash":
                    git(worktree, "merge", "--squash", "--quiet", head, env=env)
                    title = data.get("commit_title") or f"{pr.title} (#{pr.number})"
                    git(
                        worktree,
                        "commit",
                        "--quiet",
                        "--allow-empty",
                        "-m",
                        title,
                        "-m",
                        data.get("commit_message") or pr.body,
                        env=env,
                    )
                else:
                    title = data.get("commit_title") or f"Merge pull request #{pr.number} from {self.owner}/{pr.head}"
                    git(
                        worktree,
                        "merge",
                        "--no-ff",
                        "--quiet",
                        "-m",
                        title,
                        "-m",
                        data.get("commit_message") or pr.title,
                        head,
                        env=env,
                    )
            except GitFailed:
                return _error(405, "Merge conflict")
            merged = git(worktree, "rev-parse", "HEAD")
            try:  # a push, so a base that moved meanwhile is refused rather than overwritten
                git(worktree, "push", "--quiet", str(self.bare), f"HEAD:refs/heads/{pr.base}")
            except GitFailed:
                return _error(409, "Base branch was modified. Review and try the merge again.")
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)], cwd=self.bare, capture_output=True, check=False
            )
            subprocess.run(["git", "worktree", "prune"], cwd=self.bare, capture_output=True, check=False)
            shutil.rmtree(scratch, ignore_errors=True)
        now = _now()
        pr.head_sha, pr.base_sha = head, base
        pr.state, pr.merged_at, pr.closed_at, pr.updated_at = "merged", now, now, now
        pr.merge_commit_sha, pr.merged_by = merged, user
        return 200, {}, {"sha": merged, "merged": True, "message": "Pull Request successfully merged"}

    def _review(self, pr: _Pull, data: dict[str, Any], user: str):
        event = data.get("event", "COMMENT")
        states = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED", "COMMENT": "COMMENTED"}
        if event not in states:
            return _error(422, f"Unprocessable Entity: event {event!r}")
        if event != "COMMENT" and user == pr.user:
            verb = "approve" if event == "APPROVE" else "request changes on"
            return 422, {}, {"message": "Unprocessable Entity", "errors": [f"Can not {verb} your own pull request"]}
        review_id = next(self._ids)
        review = {
            "id": review_id,
            "node_id": f"PRR_{review_id}",
            "user": self._user(user),
            "body": data.get("body") or "",
            "state": states[event],
            "commit_id": data.get("commit_id") or self.sha(f"refs/heads/{pr.head}"),
            "submitted_at": _now(),
            "html_url": f"https://github.com/{self.repository}/pull/{pr.number}#pullrequestreview-{review_id}",
            "pull_request_url": f"{self.repo_url}/pulls/{pr.number}",
        }
        self.reviews.setdefault(pr.number, []).append(review)
        return 200, {}, review

    def _comment(self, number: int, body: str, user: str):
        comment_id = next(self._ids)
        comment = {
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "url": f"{self.repo_url}/issues/comments/{comment_id}",
            "html_url": f"https://github.com/{self.repository}/pull/{number}#issuecomment-{comment_id}",
            "issue_url": f"{self.repo_url}/issues/{number}",
            "body": body,
            "user": self._user(user),
            "created_at": _now(),
            "updated_at": _now(),
            "_issue": number,
        }
        self.comments[comment_id] = comment
        return 201, {}, self._public(comment)

    def _labels(self, pr: _Pull, method: str, name: str | None, request: Request):
        if method == "GET":
            return self._page(request, [self._label_json(n) for n in pr.labels])
        if method in ("POST", "PUT"):
            data = request.json()
            given = data.get("labels", []) if isinstance(data, dict) else data
            names = [g["name"] if isinstance(g, dict) else str(g) for g in given]
            pr.labels = ([] if method == "PUT" else pr.labels) + [
                n for n in names if n not in pr.labels or method == "PUT"
            ]
        elif method == "DELETE" and name is not None:
            if name not in pr.labels:
                return _error(404, "Label does not exist")
            pr.labels.remove(name)
        elif method == "DELETE":
            pr.labels = []
            return 204, {}, None
        return 200, {}, [self._label_json(n) for n in pr.labels]

    # --- convenience for tests -----------------------------------------------------------------------

    def approve(self, number: int, token: str) -> None:
        """A reviewer (one of `tokens`) approves the PR's current head, as through the UI."""
        login = self.tokens[token]
        with self._lock:
            status, _, body = self._review(self.pulls[number], {"event": "APPROVE"}, login)
        if status != 200:
            raise AssertionError(f"approve #{number} as {login}: {status} {body}")


def _token(headers: dict[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") and token.strip() else None


def _error(status: int, message: str):
    return status, {}, {"message": message, "documentation_url": DOCS, "status": str(status)}
