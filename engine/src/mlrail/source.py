"""The code half of a release: the content digest of the package source at a commit, and the
project image reference the pipelines are compiled against.

On the cluster the image is the one CI built and pushed, by its registry digest. Locally there
is no image (kfp.local runs the checkout's code), so the source digest stands in for it: the
same files give the same digest on every machine, and a change to any of them (features.py, the
Dockerfile, a pinned dependency) changes the compiled pipelines and therefore the release.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import git as gitcmd
from .errors import MlopsError

# What goes into the project image: the package, its pinned dependencies and the build recipe.
SOURCE_PATHS = ("src", "pyproject.toml", "Dockerfile")
DIGEST_PREFIX = "sha256:"
IMAGE_VAR = "PROJECT_IMAGE"  # what the team's components read at import (their base_image)


class SourceError(MlopsError):
    """The source digest cannot be computed: not a git repository, or an unknown commit."""


def _git(root: Path, args: list[str], stdin: bytes | None = None) -> bytes:
    return gitcmd.run(root, *args, error=SourceError, input=stdin, binary=True)


def source_files(root: Path | str, commit: str = "HEAD") -> list[tuple[str, str, str]]:
    """(mode, blob id, project-relative path) of every tracked source file at `commit`."""
    root = Path(root)
    try:
        _git(root, ["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"])
    except SourceError:
        raise SourceError(f"{commit!r} is not a commit of the git repository at {root}") from None
    # Paths relative to the project folder (it may sit inside a bigger repository).
    out = _git(root, ["ls-tree", "-r", "-z", commit, "--", *SOURCE_PATHS])
    entries = []
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        mode, _kind, blob = meta.decode().split()  # a submodule (mode 160000): its commit is its content
        entries.append((mode, blob, path.decode()))
    return sorted(entries, key=lambda e: e[2])


def source_digest(root: Path | str, commit: str = "HEAD") -> str:
    """sha256 over the sorted (path, mode, sha256 of the content) of the package source at `commit`.

    Read from git objects, never the working tree: uncommitted edits do not change it, and two
    clones of the same commit agree.
    """
    root = Path(root)
    entries = source_files(root, commit)
    blobs = [blob for mode, blob, _ in entries if mode != "160000"]
    contents = _cat_blobs(root, blobs) if blobs else {}
    outer = hashlib.sha256()
    for mode, blob, path in entries:
        inner = hashlib.sha256(contents[blob]).digest() if mode != "160000" else blob.encode()
        outer.update(path.encode() + b"\0" + mode.encode() + b"\0" + inner)
    return DIGEST_PREFIX + outer.hexdigest()


def _cat_blobs(root: Path, blobs: list[str]) -> dict[str, bytes]:
    """Blob contents in one `git cat-file --batch` call."""
    unique = list(dict.fromkeys(blobs))
    out = _git(root, ["cat-file", "--batch"], stdin="".join(f"{b}\n" for b in unique).encode())
    contents, at = {}, 0
    for blob in unique:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise SourceError(f"git object {blob} in {root} is not a readable blob")
        size = int(header[2])
        contents[blob] = out[end + 1 : end + 1 + size]
        at = end + 1 + size + 1  # content, then a newline
    return contents


def image_ref(image: str, digest: str) -> str:
    """`<image>@sha256:<hex>`: the image name without tag, and a registry or source digest."""
    name = image.strip()
    if not name or "@" in name:
        raise SourceError(f"image {image!r} must be a name without digest, e.g. ghcr.io/team/project")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        raise SourceError(f"image {image!r} must be a name without tag: the release pins it by digest")
    if not digest.startswith(DIGEST_PREFIX) or len(digest) != len(DIGEST_PREFIX) + 64:
        raise SourceError(f"image digest {digest!r} is not sha256:<64 hex digits>")
    return f"{name}@{digest}"


def project_image(image: str, root: Path | str, commit: str = "HEAD", image_digest: str | None = None) -> str:
    """The image the pipelines are compiled against: the pushed digest when given (CI on the
    cluster), else the source digest at `commit` as the local stand-in."""
    return image_ref(image, image_digest or source_digest(root, commit))
