"""The pull-request model every code-host backend speaks: the local one (gitops.py) and GitHub
(cluster/github.py). Kept apart so neither backend imports the other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from .errors import MlopsError

STATES = ("open", "merged", "closed")


class GitOpsError(MlopsError):
    """A git or pull-request operation cannot proceed; the message says what to fix."""


@dataclass
class PullRequest:
    number: int
    branch: str
    base: str
    title: str
    body: str
    state: str  # open | merged | closed
    files: list[str] = field(default_factory=list)
    url: str = ""
    head: str = ""  # the branch's commit
    merge_commit: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class PullRequests(Protocol):
    """What the promotion flows need from a code host."""

    def find_open(self, branch: str) -> PullRequest | None: ...

    def open_or_update(
        self, branch: str, base: str, title: str, body: str, files_changed: dict[str, str]
    ) -> PullRequest: ...

    def get(self, number: int) -> PullRequest: ...

    def merge(self, number: int) -> PullRequest: ...

    def close(self, number: int) -> PullRequest: ...

    def list(self, state: str | None = None) -> list[PullRequest]: ...
