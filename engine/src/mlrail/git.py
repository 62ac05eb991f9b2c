"""The one way the engine runs git: a deadline on every call, the caller's error type, and one
line naming the command and git's own last word when it fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import MlopsError

TIMEOUT_S = 120  # a local git call; network-free (the remotes here are folders)


class GitError(MlopsError):
    """A git command failed; callers usually pass their own error type instead."""


def run(
    root: Path | str,
    *args: str,
    error: type[MlopsError] = GitError,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,  # noqa: A002 - subprocess's own name
    strip: bool = True,
    binary: bool = False,
) -> str | bytes:
    """git's stdout (stripped unless `strip=False`; bytes with `binary=True`), or `error`."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=root,
            env={**os.environ, **env} if env else None,
            input=input,
            capture_output=True,
            text=not binary,
            timeout=TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise error("git is not on PATH: install git") from None
    except subprocess.TimeoutExpired:
        raise error(f"`git {' '.join(args)}` did not finish within {TIMEOUT_S}s in {root}") from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace") if binary else result.stderr
        stdout = "" if binary else result.stdout
        detail = (stderr or stdout).strip().splitlines()
        raise error(f"`git {' '.join(args)}` failed in {root}: {detail[-1] if detail else 'no output'}")
    if binary:
        return result.stdout
    return result.stdout.strip() if strip else result.stdout


def probe(root: Path | str, *args: str) -> subprocess.CompletedProcess:
    """Run git for an answer, not an effect: the caller reads returncode and stdout (text)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["git", *args], 128, "", str(exc))


def ok(root: Path | str, *args: str) -> bool:
    """Whether the git command succeeds (is this a repository, an ancestor, ...)."""
    return probe(root, *args).returncode == 0


def rev(root: Path | str, ref: str) -> str | None:
    """The object `ref` names, or None when it names nothing."""
    result = probe(root, "rev-parse", "--verify", "--quiet", ref)
    return (result.stdout.strip() or None) if result.returncode == 0 else None
