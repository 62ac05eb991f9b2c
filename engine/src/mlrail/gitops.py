"""The git remote and its pull requests, behind one interface.

Promotion, deployment and rollback are pull requests against `main`; a merge is what moves an
environment. Two backends implement `PullRequests`:

- `local` (the embedded default): the remote is a bare repository `.mlops/remote.git` (also
  added as `origin` when the project has none) and pull requests are records in
  `.mlops/pulls.json`. Merging one merges its branch into the remote's `main` and
  fast-forwards the local checkout.
- `github` (cluster/github.py): the REST API, with the token of the workflow's GitHub App.

Branch commits are built with git plumbing on a temporary index, so opening a pull request
never touches the working tree, the index or the checked-out branch.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import git as gitcmd
from .config import Config
from .fsutil import atomic_write_text
from .pulls import STATES, GitOpsError, PullRequest, PullRequests

PULLS_LOCK_WAIT_S = 60.0  # writers hold it for a git push at most
BOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "mlops-bot",
    "GIT_AUTHOR_EMAIL": "mlops-bot@localhost",
    "GIT_COMMITTER_NAME": "mlops-bot",
    "GIT_COMMITTER_EMAIL": "mlops-bot@localhost",
}


# --- git helpers shared by every backend -----------------------------------------------------


def git(root: Path, *args: str, env: dict[str, str] | None = None, input_text: str | None = None) -> str:
    """Run git in `root` and return its stripped stdout; a failure is a GitOpsError."""
    return gitcmd.run(root, *args, error=GitOpsError, env=env, input=input_text)


def _git_ok(root: Path, *args: str) -> bool:
    return gitcmd.ok(root, *args)


def require_repository(root: Path) -> None:
    if not _git_ok(root, "rev-parse", "--verify", "HEAD"):
        raise GitOpsError(f"{root} is not a git repository with a commit: run `git init` and commit the project first")


def head_commit(root: Path) -> str:
    """The checked-out commit, recorded as the lineage of every model trained from it."""
    require_repository(root)
    return git(root, "rev-parse", "HEAD")


def identity(root: Path) -> dict[str, str]:
    """The configured git identity, or the bot's when none is set (as on a fresh CI runner)."""
    if git_config(root, "user.email") and git_config(root, "user.name"):
        return {}
    return dict(BOT_IDENTITY)


def git_config(root: Path, key: str) -> str:
    return gitcmd.probe(root, "config", key).stdout.strip()


def show(root: Path, ref: str, path: str) -> str | None:
    """A file's content at `ref`, or None when it does not exist there."""
    result = gitcmd.probe(root, "show", f"{ref}:{path}")
    return result.stdout if result.returncode == 0 else None


def file_history(root: Path, path: str, ref: str = "HEAD") -> list[tuple[str, str | None]]:
    """(commit, content) of `path` at every commit that changed it, newest first."""
    commits = git(root, "log", "--format=%H", ref, "--", path).split()
    return [(commit, show(root, commit, path)) for commit in commits]


def file_log(root: Path, path: str, ref: str = "HEAD") -> list[tuple[str, str, str | None]]:
    """(commit, subject, content) of `path` at every commit that changed it, newest first."""
    lines = git(root, "log", "--format=%H %s", ref, "--", path).splitlines()
    entries = [line.partition(" ") for line in lines if line]
    return [(commit, subject, show(root, commit, path)) for commit, _, subject in entries]


def is_ancestor(root: Path, older: str, newer: str) -> bool | None:
    """Whether `older` is an ancestor of (or equal to) `newer`; None when git does not know either commit."""
    return {0: True, 1: False}.get(gitcmd.probe(root, "merge-base", "--is-ancestor", older, newer).returncode)


def diff_paths(root: Path, base: str, head: str = "HEAD") -> list[str]:
    """Files a change from the merge base of `base` and `head` to `head` touches (what a PR changes)."""
    return sorted(git(root, "diff", "--name-only", f"{base}...{head}").split())


def commit_files(root: Path, base: str, files: dict[str, str], message: str) -> tuple[str, list[str]] | None:
    """A commit on top of `base` that sets `files` (path -> text); None when nothing changes.

    Built on a temporary index with plumbing: the working tree and the current branch stay as they are.
    """
    with tempfile.TemporaryDirectory(prefix="mlops-index-") as tmp:
        index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(root, "read-tree", base, env=index_env)
        for path, text in sorted(files.items()):
            blob = git(root, "hash-object", "-w", "--stdin", input_text=text)
            git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=index_env)
        tree = git(root, "write-tree", env=index_env)
    if tree == tree_of(root, base):
        return None
    commit = git(root, "commit-tree", tree, "-p", base, "-m", message, env=identity(root))
    return commit, changed_files(root, base, commit)


def tree_of(root: Path, commit: str) -> str:
    return git(root, "rev-parse", commit + "^" + "{tree}")


def uncommitted_paths(root: Path, paths: tuple[str, ...] | list[str]) -> list[str]:
    """Paths under `paths` with uncommitted changes (staged, unstaged or untracked)."""
    # outside a git repository nothing counts as uncommitted
    out = gitcmd.probe(root, "status", "--porcelain", "-z", "--untracked-files=all", "--", *paths).stdout
    return [entry[3:] for entry in out.split("\0") if len(entry) > 3]


def changed_files(root: Path, base: str, commit: str) -> list[str]:
    return sorted(git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", base, commit).split())


# --- the local backend ---------------------------------------------------------------------


class LocalPullRequests:
    """Pull requests recorded in `.mlops/pulls.json` against the bare remote `.mlops/remote.git`."""

    def __init__(self, root: Path, local_root: Path):
        self.root = Path(root)
        self.remote = Path(local_root) / "remote.git"
        self.record = Path(local_root) / "pulls.json"
        self._lock_path = Path(local_root) / "pulls.lock"

    @classmethod
    def for_config(cls, cfg: Config) -> LocalPullRequests:
        return cls(cfg.root, cfg.local_root)

    # -- the protocol --

    def find_open(self, branch: str) -> PullRequest | None:
        return next((pr for pr in self.list("open") if pr.branch == branch), None)

    def list(self, state: str | None = None) -> list[PullRequest]:
        if state is not None and state not in STATES:
            raise GitOpsError(f"pull request state {state!r} is unknown; expected one of {', '.join(STATES)}")
        pulls = [PullRequest(**raw) for raw in self._load()]
        return [pr for pr in pulls if state is None or pr.state == state]

    def get(self, number: int) -> PullRequest:
        for pr in self.list():
            if pr.number == number:
                return pr
        known = ", ".join(f"#{pr.number}" for pr in self.list()) or "none yet"
        raise GitOpsError(f"pull request #{number} does not exist (known: {known}); list them with `prs`")

    def open_or_update(
        self, branch: str, base: str, title: str, body: str, files_changed: dict[str, str]
    ) -> PullRequest:
        """Push `branch` = `base` + `files_changed` and record its pull request.

        Rerunning with the same content pushes nothing and updates the one open pull request.
        """
        if not files_changed:
            raise GitOpsError(f"pull request {branch!r} changes no file; pass at least one path and its content")
        with self._locked():
            self._ensure_remote()
            base_sha = self._remote_ref(base)
            if base_sha is None:
                raise GitOpsError(f"base branch {base!r} does not exist in {self.remote}")
            self._fetch(base)
            head, files = self._branch_commit(branch, base_sha, files_changed, title)
            pulls = self._load()
            existing = next((p for p in pulls if p["branch"] == branch and p["state"] == "open"), None)
            if existing is None:
                number = max((p["number"] for p in pulls), default=0) + 1
                existing = PullRequest(number, branch, base, title, body, "open", url=self._url(number)).to_dict()
                pulls.append(existing)
            existing.update(title=title, body=body, files=files, head=head, base=base)
            self._save(pulls)
            return PullRequest(**existing)

    def merge(self, number: int, check: Callable[[PullRequest], None] | None = None) -> PullRequest:
        """Merge into `base` in the remote, then fast-forward the local checkout.

        `check(pr)` runs first and may raise to refuse the merge; uncommitted local edits of the
        PR's files that differ from it refuse it too. Both before the remote or the record change."""
        with self._locked():
            pr = self.get(number)
            if pr.state == "closed":
                raise GitOpsError(f"pull request #{number} is closed; open a new one instead of merging it")
            if pr.state == "open" and pr.head and (self.remote / "HEAD").exists() and not self._has_commit(pr.head):
                self._fetch(pr.branch)  # opened elsewhere (CI): bring its commits; no local ref moves
            if check is not None:
                check(pr)  # e.g. the release provenance: refused before anything is published
            self._ensure_remote()
            if pr.state == "open":
                # Everything that could stop the fast-forward is checked before the remote moves.
                self._refuse_differing_changes(pr, pr.head)
                pr.merge_commit = self._merge_remote(pr)
                pr.state = "merged"
                self._update(pr)
            self._fast_forward_local(pr)
            return pr

    def close(self, number: int) -> PullRequest:
        with self._locked():
            pr = self.get(number)
            if pr.state == "merged":
                raise GitOpsError(f"pull request #{number} is already merged; revert it with a new pull request")
            if pr.state == "open":
                pr.state = "closed"
                self._update(pr)
            return pr

    # -- records --

    def _url(self, number: int) -> str:
        return f"{self.record}#{number}"

    def _load(self) -> list[dict]:
        if not self.record.exists():
            return []
        if not self.record.is_file():
            raise GitOpsError(f"{self.record} is not a file; it should hold the pull-request record: move it away")
        try:
            pulls = json.loads(self.record.read_text())["pulls"]
            if not isinstance(pulls, list) or not all(isinstance(p, dict) for p in pulls):
                raise TypeError("pulls is not a list of records")
            return pulls
        except (ValueError, KeyError, TypeError) as exc:
            raise GitOpsError(f"{self.record} is not a pull-request record ({exc}); fix or delete it") from None

    def _save(self, pulls: list[dict]) -> None:
        atomic_write_text(self.record, json.dumps({"pulls": pulls}, indent=2, sort_keys=True) + "\n")

    def _update(self, pr: PullRequest) -> None:
        pulls = [pr.to_dict() if p["number"] == pr.number else p for p in self._load()]
        self._save(pulls)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time: CI runs one job per environment, people may run two commands.
        from filelock import FileLock, Timeout

        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self._lock_path, timeout=PULLS_LOCK_WAIT_S):
                yield
        except Timeout:
            raise GitOpsError(
                f"{self._lock_path} stayed locked for {PULLS_LOCK_WAIT_S:.0f}s: another command is writing the "
                "pull requests; rerun when it is done"
            ) from None

    # -- the remote --

    def _remote_git(self, *args: str, env: dict[str, str] | None = None) -> str:
        return git(self.root, "--git-dir", str(self.remote), *args, env=env)

    def _remote_ref(self, branch: str) -> str | None:
        return gitcmd.rev(self.remote, f"refs/heads/{branch}")

    def _ensure_remote(self) -> None:
        """Create the bare remote on first use, name it origin if there is none, publish local main."""
        require_repository(self.root)
        if not (self.remote / "HEAD").exists():
            self.remote.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self.remote.parent, prefix=".remote-"))
            git(self.root, "init", "--quiet", "--bare", "--initial-branch=main", str(staging))
            staging.rename(self.remote)  # atomic: a crash never leaves half a remote
        if not _git_ok(self.root, "remote", "get-url", "origin"):
            git(self.root, "remote", "add", "origin", str(self.remote))
        self._publish_main()

    def _publish_main(self) -> None:
        """Local commits on main stand for merges to main: push them when they fast-forward."""
        local = gitcmd.rev(self.root, "refs/heads/main")
        if not local:
            raise GitOpsError(f"{self.root} has no `main` branch; pull requests target main")
        remote = self._remote_ref("main")
        if remote == local:
            return
        if remote is None or _git_ok(self.root, "merge-base", "--is-ancestor", remote, local):
            git(self.root, "push", "--quiet", str(self.remote), f"{local}:refs/heads/main")
            return
        self._fetch("main")
        if not _git_ok(self.root, "merge-base", "--is-ancestor", local, remote):
            raise GitOpsError(
                f"local main ({local[:12]}) and the remote's main ({remote[:12]}) have diverged: "
                f"merge or rebase local main onto {self.remote} main, then rerun"
            )

    def _has_commit(self, sha: str) -> bool:
        return _git_ok(self.root, "cat-file", "-e", f"{sha}^{{commit}}")

    def _fetch(self, branch: str) -> str:
        git(self.root, "fetch", "--quiet", "--no-tags", str(self.remote), f"refs/heads/{branch}")
        return git(self.root, "rev-parse", "FETCH_HEAD")

    def record_branch(self, branch: str, base_sha: str, files: dict[str, str], message: str) -> str:
        """Point `branch` of the remote at `base_sha` + `files` (force); returns the commit."""
        self._ensure_remote()
        made = commit_files(self.root, base_sha, files, message)
        target = made[0] if made else base_sha
        current = self._remote_ref(branch)
        if current and made:
            self._fetch(branch)
            if tree_of(self.root, current) == tree_of(self.root, target) and (
                git(self.root, "rev-parse", f"{current}^") == base_sha
            ):
                return current
        if current != target:
            git(self.root, "push", "--quiet", "--force", str(self.remote), f"{target}:refs/heads/{branch}")
        return target

    def _branch_commit(self, branch: str, base_sha: str, files: dict[str, str], title: str) -> tuple[str, list[str]]:
        current = self._remote_ref(branch)
        made = commit_files(self.root, base_sha, files, title)
        if made is None:
            raise GitOpsError(f"pull request {branch!r} would change nothing: main already has this content")
        commit, changed = made
        if current:
            # Same parent and same tree: the branch already holds this change, push nothing.
            self._fetch(branch)
            same_tree = tree_of(self.root, current) == tree_of(self.root, commit)
            if same_tree and git(self.root, "rev-parse", f"{current}^") == base_sha:
                return current, changed
        git(self.root, "push", "--quiet", "--force", str(self.remote), f"{commit}:refs/heads/{branch}")
        return commit, changed

    def _merge_remote(self, pr: PullRequest) -> str:
        """Merge the branch into base inside the bare remote; safe to rerun after a crash."""
        base_sha = self._remote_ref(pr.base)
        head = self._remote_ref(pr.branch)
        if base_sha is None or head is None:
            raise GitOpsError(
                f"pull request #{pr.number}: branch {pr.branch!r} or {pr.base!r} is missing in the remote"
            )
        if _git_ok(self.remote, "merge-base", "--is-ancestor", head, base_sha):
            return base_sha  # merged already (a rerun after a crash)
        if _git_ok(self.remote, "merge-base", "--is-ancestor", base_sha, head):
            merged = head
        else:
            result = gitcmd.probe(self.remote, "merge-tree", "--write-tree", base_sha, head)
            if result.returncode != 0:
                raise GitOpsError(
                    f"pull request #{pr.number} conflicts with {pr.base} in {', '.join(pr.files)}: "
                    "close it and rerun the command that opened it"
                )
            tree = result.stdout.split()[0]
            merged = git(
                self.remote,
                "commit-tree",
                tree,
                "-p",
                base_sha,
                "-p",
                head,
                "-m",
                f"Merge pull request #{pr.number} from {pr.branch}\n\n{pr.title}",
                env=identity(self.root),
            )
        # Compare-and-swap: a concurrent push to base makes this fail instead of losing it.
        self._remote_git("update-ref", f"refs/heads/{pr.base}", merged, base_sha)
        return merged

    def _fast_forward_local(self, pr: PullRequest) -> None:
        """Bring the local checkout to the merged base without touching unrelated uncommitted files."""
        target = self._fetch(pr.base)
        local = git(self.root, "rev-parse", f"refs/heads/{pr.base}")
        if local == target:
            return
        if not _git_ok(self.root, "merge-base", "--is-ancestor", local, target):
            raise GitOpsError(
                f"local {pr.base} has commits that are not in the remote: push or rebase them, "
                f"then run `merge --pr {pr.number}` again to fast-forward"
            )
        current = gitcmd.probe(self.root, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.strip()
        if current != pr.base:
            git(self.root, "update-ref", f"refs/heads/{pr.base}", target, local)
            return
        changed = changed_files(self.root, local, target)
        self._clear_identical_changes(changed, target, pr.number)
        git(self.root, "merge", "--quiet", "--ff-only", target)

    def _refuse_differing_changes(self, pr: PullRequest, target: str) -> None:
        """Uncommitted local edits of the PR's files that differ from its content stop the merge."""
        for path in uncommitted_paths(self.root, pr.files) if pr.files else []:
            working = self.root / path
            wanted = show(self.root, target, path)
            if wanted is None or not working.is_file() or working.read_text() != wanted:
                raise GitOpsError(
                    f"{path} has uncommitted changes that differ from pull request #{pr.number}: "
                    f"commit or discard them, then run `merge --pr {pr.number}` again (nothing was merged)"
                )

    def _clear_identical_changes(self, paths: list[str], target: str, number: int) -> None:
        """Uncommitted edits equal to what the merge brings are dropped; any other edit stops the merge."""
        if not paths:
            return
        for path in uncommitted_paths(self.root, paths):
            working = self.root / path
            wanted = show(self.root, target, path)
            if wanted is None or not working.is_file() or working.read_text() != wanted:
                raise GitOpsError(
                    f"{path} has uncommitted changes that differ from pull request #{number}: "
                    f"commit or discard them, then run `merge --pr {number}` again"
                )
            if show(self.root, "HEAD", path) is None:
                git(self.root, "rm", "--quiet", "--cached", "--ignore-unmatch", "--", path)
                working.unlink()
            else:
                git(self.root, "checkout", "--quiet", "HEAD", "--", path)


# --- backends --------------------------------------------------------------------------------


def _github(cfg: Config) -> PullRequests:
    from .cluster.github import GitHubPullRequests  # the REST client loads only when used

    return GitHubPullRequests.for_config(cfg)


# name -> factory: the embedded local backend, and GitHub (cluster/github.py).
BACKENDS: dict[str, Callable[[Config], PullRequests]] = {"local": LocalPullRequests.for_config, "github": _github}


def backend_name(cfg: Config) -> str:
    """`pull_requests:` in config, else github when production runs on a cluster, else local."""
    if cfg.pull_requests:
        return cfg.pull_requests
    return "github" if cfg.env("production").backend == "cluster" else "local"


def pull_requests(cfg: Config) -> PullRequests:
    """The pull-request backend of this project (the config schema admits only the names in BACKENDS)."""
    return BACKENDS[backend_name(cfg)](cfg)
