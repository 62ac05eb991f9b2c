"""Finish the generated repository: drop the files of options not chosen, record the answers
(cruft-compatible, so the project can be replayed and updated), make the first commit."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# jsonify then tojson: a JSON document inside a Python string literal, whatever the answers hold.
CONTEXT = json.loads({{ cookiecutter | jsonify | tojson }})
# jsonify sorts the keys; cruft records them in cookiecutter's order (cookiecutter.json's).
KEY_ORDER = json.loads({{ cookiecutter.keys() | list | tojson | tojson }})
ROOT = Path.cwd()
# git without the variables that point it at another repository (cookiecutter may run inside
# a git hook of another repository): the new project is committed, never that one.
GIT_LOCATION_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                          "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX")
GIT_ENV = {key: value for key, value in os.environ.items() if key not in GIT_LOCATION_VARIABLES}


def _template_checkout():
    """The local template directory this hook comes from. cookiecutter runs hooks with its own
    working directory inside the template (its _repo_dir), and this hook is its direct child:
    Linux names that directory exactly, whatever $PWD says."""
    try:
        running_from = Path(os.readlink(f"/proc/{os.getppid()}/cwd"))
    except OSError:
        return None
    return running_from if (running_from / "hooks" / "post_gen_project.py").is_file() else None


def _absolute(location):
    """cookiecutter passes a local template path as typed, relative to where it was started;
    hooks run inside the new project, so resolve it: the template checkout itself when the
    path is the one cookiecutter ran the hooks from, else against the shell's $PWD."""
    if not location or "://" in location or location.startswith(("gh:", "gl:", "bb:", "git@")):
        return location
    path = Path(location).expanduser()
    if not path.is_absolute():
        checkout = _template_checkout()
        if location == CONTEXT.get("_repo_dir") and checkout is not None:
            path = checkout
        else:
            path = Path(os.environ.get("PWD", ROOT)) / path
    return str(path.resolve())


TEMPLATE = _absolute(CONTEXT.get("_template"))
TEMPLATE_DIR = _absolute(CONTEXT.get("_repo_dir")) or TEMPLATE


def remove(*relative_paths):
    for relative in relative_paths:
        path = ROOT / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def apply_promotion(choice):
    """Each pattern keeps its own guide and production workflow; the other one goes."""
    other = "retrain" if choice == "transit" else "transit"
    remove(f"docs/promotion-{other}.md", f".github/workflows/production-{other}.yml")


def apply_argocd(choice):
    if choice == "no":
        remove("deploy/argocd")
    keep_regions("argocd", choice)


# Workflows are copied without rendering (GitHub expressions fill them), so an option's variants of a
# step live in marked regions: `# [<option>: <choice>, ...]` ... `# [end <option>]`, each marker
# alone on its line. Every region of the option is kept (without its markers) when the chosen
# value is listed, else removed with its markers. Regions of different options may nest.
WORKFLOW_GLOBS = (".github/workflows/*.yml", ".github/workflows/*.yaml")


def keep_regions(option, choice):
    begin = re.compile(rf"^\s*# \[{option}: ([a-z0-9, -]+)\]\s*$")
    end = re.compile(rf"^\s*# \[end {option}\]\s*$")
    for pattern in WORKFLOW_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            kept, region, opened = [], None, 0
            for number, line in enumerate(text.splitlines(keepends=True), start=1):
                if match := begin.match(line):
                    if region is not None:
                        where = f"{path.name}:{number}"
                        sys.exit(f"error: {where}: a [{option}] region opened inside the one of line {opened}.")
                    region, opened = {c.strip() for c in match.group(1).split(",")}, number
                elif end.match(line):
                    if region is None:
                        sys.exit(f"error: {path.name}:{number}: [end {option}] without its opening marker.")
                    region = None
                elif region is None or choice in region:
                    kept.append(line)
            if region is not None:
                sys.exit(f"error: {path.name}:{opened}: the [{option}] region is never closed.")
            path.write_text("".join(kept), encoding="utf-8")


def apply_cloud(choice):
    """The workflows keep the credential steps of the chosen cloud only (aws, gcp or none)."""
    keep_regions("cloud", choice)


def _git(*argv):
    result = subprocess.run(
        ["git", "-C", TEMPLATE_DIR, *argv],
        capture_output=True,
        text=True,
        check=False,
        env=GIT_ENV,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def template_commit():
    """The template commit rendered: cruft passes it (`_commit`); cookiecutter renders the
    checkout it cloned (a git URL) or the local directory as it is. A local checkout with
    uncommitted changes was not rendered from any commit: its HEAD is recorded with a warning."""
    if CONTEXT.get("_commit"):
        return CONTEXT["_commit"]
    if not TEMPLATE_DIR or not Path(TEMPLATE_DIR).is_dir() or not shutil.which("git"):
        return None
    head = _git("rev-parse", "--verify", "HEAD^{commit}")
    if head and _git("status", "--porcelain"):
        print(
            f"warning: the template {TEMPLATE_DIR} has uncommitted changes; .cruft.json records its HEAD "
            f"{head[:12]}, which is not exactly what was generated (commit the template first).",
            file=sys.stderr,
        )
    return head


# Keys cookiecutter's own run adds to the context; cruft's .cruft.json does not carry them.
RUN_KEYS = ("_output_dir", "_repo_dir", "_checkout", "_template", "_commit")


def record_answers():
    """.cruft.json exactly as `cruft create` writes it (key order, the rendered commit, json
    layout), so `cruft diff` and `cruft update` start from a clean state."""
    commit = template_commit()
    ordered = [key for key in KEY_ORDER if key in CONTEXT] + [key for key in CONTEXT if key not in KEY_ORDER]
    answers = {key: CONTEXT[key] for key in ordered if key not in RUN_KEYS and key != "__prompts__"}
    answers["_template"] = TEMPLATE
    answers["_commit"] = commit
    record = {
        "template": TEMPLATE,
        "commit": commit,
        "checkout": CONTEXT.get("_checkout"),
        "context": {"cookiecutter": answers},
        "directory": None,
        "skip": [".git", ".mlops", ".venv", "build"],
    }
    text = json.dumps(record, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    (ROOT / ".cruft.json").write_text(text, encoding="utf-8")


def initial_commit():
    """One commit on main, so the first PR has a base; skipped quietly without git."""
    if not shutil.which("git") or os.environ.get("MLOPS_TEMPLATE_NO_GIT"):
        return
    identity = []
    probe = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, check=False, env=GIT_ENV)
    if not probe.stdout.strip():
        identity = ["-c", "user.name=mlops-template", "-c", "user.email=mlops-template@localhost"]
    for argv in (
        ["git", "init", "--quiet", "--initial-branch=main"],
        ["git", "add", "--all"],
        [*["git", *identity], "commit", "--quiet", "--no-verify", "-m", "Initial commit from the MLOps GitOps template"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=GIT_ENV)
        if result.returncode != 0:
            print(f"warning: `{' '.join(argv)}` failed, the repository is left uncommitted: "
                  f"{result.stderr.strip()}", file=sys.stderr)
            return


def next_steps():
    """The one thing cookiecutter does not say: what to run now."""
    try:
        where = os.path.relpath(ROOT, os.environ.get("PWD") or os.getcwd())
    except ValueError:
        where = str(ROOT)
    where = str(ROOT) if where.startswith("..") else where
    engine = CONTEXT.get("_engine_version", "")
    print(
        f"Generated {CONTEXT['project']} in {where} ({CONTEXT['promotion']} promotion, "
        f"Argo CD: {CONTEXT['argocd']}, cloud: {CONTEXT['cloud']}, environments as {CONTEXT['isolation']}). Next:"
    )
    print(f"  cd {shlex.quote(where)} && make bootstrap && make check")
    print(f"Before mlrail {engine} is on your package index, bootstrap from a folder holding its wheel:")
    print("  make bootstrap ENGINE_WHEELS=/absolute/path/to/wheels")


def main():
    apply_promotion(CONTEXT["promotion"])
    apply_argocd(CONTEXT["argocd"])
    apply_cloud(CONTEXT["cloud"])
    record_answers()
    initial_commit()
    if not CONTEXT.get("_commit"):  # cruft re-renders the template for diff/update: no advice then
        next_steps()


if __name__ == "__main__":
    main()
