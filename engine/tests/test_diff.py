"""`diff` on real git histories: each test copies this repository's deploy/ tree into a new git
repository, commits the pull request's change and diffs the two commits."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from example import PACKAGE as PACKAGE_NAME
from example import ROOT
from mlrail import cli, config, overlays

PACKAGE = f"src/{PACKAGE_NAME}"
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
DIGEST_3 = "sha256:" + "3" * 64
DIGEST_4 = "sha256:" + "4a" * 32


class Repo:
    def __init__(self, path: Path):
        self.path = path

    def git(self, *args: str) -> str:
        return subprocess.run([*GIT, *args], cwd=self.path, check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "HEAD")

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.path / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))

    def diff(self, base: str = "HEAD~1", head: str = "HEAD") -> overlays.DiffReport:
        cfg = config.load(self.path)
        return overlays.diff_refs(self.path, base, head, pipelines=cfg.pipelines, image=cfg.image)


def make_repo(path: Path, folders=("config", "deploy"), files=()) -> Repo:
    for folder in folders:
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in files:
        shutil.copy(ROOT / name, path / name)
    repo = Repo(path)
    repo.git("init", "-q")
    repo.commit("initial")
    return repo


@pytest.fixture()
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def promote(repo: Repo, version: str, digest: str, image: str | None = None) -> None:
    release = repo.path / "deploy/overlays/production/release.yaml"
    text = re.sub(r"modelVersion: .*", f'modelVersion: "{version}"', release.read_text())
    text = re.sub(r"modelDigest: .*", f"modelDigest: {digest}", text)
    text = re.sub(r"storageUri: .*", f"storageUri: s3://models/{digest.replace(':', '-')}", text)
    text = re.sub(r"modelSource: .*", f"modelSource: staging:m/{version}", text)
    if image:
        text = re.sub(r"  image: .*", f"  image: {image}", text)
    release.write_text(text)


def by_name(report: overlays.DiffReport) -> dict[str, overlays.OverlayDiff]:
    return {o.name: o for o in report.overlays}


def test_model_promotion_renders_only_production_and_headlines_the_model(repo):
    promote(repo, "3", DIGEST_3)
    repo.commit("promote version 3")
    promote(repo, "4", DIGEST_4)
    repo.commit("promote version 4")

    report = repo.diff()
    assert [o.name for o in report.overlays] == ["production"]
    assert report.unaffected == ["staging", "sandbox"]
    production = report.overlays[0]
    assert production.status == "changed"
    assert production.because == ["deploy/overlays/production/release.yaml"]
    assert {(r.key[0], r.key[2], r.status) for r in production.resources} == {
        ("ConfigMap", "release", "changed"),
        ("InferenceService", _project(repo), "changed"),
    }
    assert production.headline[:2] == [
        "model **version** `3` → `4`",
        "model **digest** `sha256:333333333333…` → `sha256:4a4a4a4a4a4a…`",
    ]
    markdown = overlays.to_markdown(report)
    assert "| **production** | 0 | 0 | 2 | model **version** `3` → `4`<br>" in markdown
    assert "Not affected, not rendered: staging, sandbox." in markdown
    assert f"+      storageUri: s3://models/{DIGEST_4.replace(':', '-')}" in markdown
    assert markdown.count("<details>") == markdown.count("</details>") == 1
    assert overlays.to_markdown(repo.diff()) == markdown  # deterministic: no temp paths, no times


def _project(repo: Repo) -> str:
    import yaml

    return yaml.safe_load((repo.path / "config/environments.yaml").read_text())["project"]


def test_image_in_a_release_reaches_the_feature_job(repo):
    image = "ghcr.io/my-org/churn-classifier@" + DIGEST_3
    promote(repo, "3", DIGEST_3, image)
    repo.commit("promote version 3 with its image")
    promote(repo, "4", DIGEST_4, image.replace(DIGEST_3, DIGEST_4))
    repo.commit("promote version 4 with a new image")

    (production,) = repo.diff().overlays
    assert {r.key[0] for r in production.resources} == {"ConfigMap", "CronJob", "InferenceService"}
    assert "image `ghcr.io/my-org/churn-classifier` `@sha256:333333333333…` → `@sha256:4a4a4a4a4a4a…`" in (
        production.headline
    )


def test_base_change_touches_every_overlay_production_first(repo):
    repo.edit("deploy/base/inferenceservice.yaml", "memory: 1Gi", "memory: 2Gi")
    repo.commit("predictor: 2Gi")

    report = repo.diff()
    assert [o.name for o in report.overlays] == ["production", "staging", "sandbox"]
    assert report.unaffected == []
    for overlay in report.overlays:
        assert overlay.because == ["deploy/base/inferenceservice.yaml"]
        assert any("model limits.memory `1Gi` → `2Gi`" in line for line in overlay.headline)
    markdown = overlays.to_markdown(report)
    sections = [markdown.index(f"<summary><b>{name}</b>") for name in ("production", "staging", "sandbox")]
    assert sections == sorted(sections)


def test_replica_change_is_a_headline(repo):
    repo.edit("deploy/overlays/production/kustomization.yaml", "value: 4", "value: 6")
    repo.commit("production: up to 6 replicas")

    (production,) = repo.diff().overlays
    assert any(line.endswith("predictor maxReplicas `4` → `6`") for line in production.headline)


def test_new_overlay_is_all_added(repo):
    shutil.copytree(repo.path / "deploy/overlays/staging", repo.path / "deploy/overlays/qa")
    for path in (repo.path / "deploy/overlays/qa").iterdir():
        path.write_text(path.read_text().replace("-staging", "-qa").replace(": staging", ": qa"))
    repo.commit("a qa environment")

    report = repo.diff()
    assert [o.name for o in report.overlays] == ["qa"]
    qa = report.overlays[0]
    assert qa.status == "new" and qa.base_error is None
    assert qa.resources and {r.status for r in qa.resources} == {"added"}
    assert "🆕 new overlay" in overlays.to_markdown(report)


def test_deleted_file_counts(repo):
    (repo.path / "deploy/overlays/sandbox/namespace.yaml").unlink()
    repo.edit("deploy/overlays/sandbox/kustomization.yaml", "  - namespace.yaml\n", "")
    repo.commit("sandbox: namespace managed elsewhere")

    report = repo.diff()
    assert [o.name for o in report.overlays] == ["sandbox"]
    assert [(r.key[0], r.status) for r in report.overlays[0].resources] == [("Namespace", "removed")]


def test_deleted_overlay_is_all_removed(repo):
    shutil.rmtree(repo.path / "deploy/overlays/sandbox")
    repo.commit("no sandbox")

    (sandbox,) = repo.diff().overlays
    assert sandbox.status == "removed" and {r.status for r in sandbox.resources} == {"removed"}


def test_rename_counts_at_both_paths_and_renders_identically(repo):
    repo.git("mv", "deploy/overlays/production/release.yaml", "deploy/overlays/production/release-ref.yaml")
    repo.edit("deploy/overlays/production/kustomization.yaml", "  - release.yaml", "  - release-ref.yaml")
    repo.commit("rename the release file")

    report = repo.diff()
    renames = [c for c in report.changes if c.status == "R"]
    assert [(c.old_path, c.path) for c in renames] == [
        ("deploy/overlays/production/release.yaml", "deploy/overlays/production/release-ref.yaml")
    ]
    (production,) = report.overlays
    assert production.status == "unchanged" and not production.resources
    assert "no change in the rendered resources" in overlays.to_markdown(report)


def test_rename_without_updating_the_reference_fails_at_head(repo):
    """The old path is only referenced at base, the new one at head: both count."""
    repo.git("mv", "deploy/base/rbac.yaml", "deploy/base/access.yaml")
    repo.commit("rename rbac.yaml, forget the kustomization")

    report = repo.diff()
    assert [o.status for o in report.overlays] == ["failed"] * 3
    assert report.failed


def test_overlay_that_breaks_at_head_is_reported_and_fails_the_command(repo, monkeypatch, capsys):
    repo.edit(
        "deploy/overlays/sandbox/kustomization.yaml", "  - release.yaml\n", "  - release.yaml\n  - missing.yaml\n"
    )
    repo.commit("sandbox references a file that does not exist")
    monkeypatch.chdir(repo.path)

    code = cli.main(["diff", "--base", "HEAD~1"])
    assert code == 1
    markdown = (repo.path / "build/diff.md").read_text()
    assert markdown == capsys.readouterr().out
    assert "❌ **fails to render at head**" in markdown
    assert "<details open>" in markdown
    assert "deploy/overlays/sandbox/missing.yaml" in markdown  # kustomize's own message, repository paths
    assert "overlay-diff-" not in markdown and "E1" not in markdown.split("kustomize failed", 1)[1][:40]
    assert (repo.path / "build/diff-full.md").read_text() == markdown


def test_overlay_broken_at_base_is_shown_as_new(repo):
    repo.edit(
        "deploy/overlays/sandbox/kustomization.yaml", "  - release.yaml\n", "  - release.yaml\n  - missing.yaml\n"
    )
    repo.commit("broken")
    repo.edit("deploy/overlays/sandbox/kustomization.yaml", "  - missing.yaml\n", "")
    repo.commit("fixed")

    report = repo.diff()
    (sandbox,) = report.overlays
    assert sandbox.status == "new" and "missing.yaml" in sandbox.base_error
    assert not report.failed
    assert "did not render at base" in overlays.to_markdown(report)


def test_oversized_diff_is_cut_longest_first_under_the_comment_limit(repo):
    big = "\n".join(f"  key{i:05d}: value {i} " + "x" * 40 for i in range(3000))
    (repo.path / "deploy/overlays/staging/big.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n{big}\n"
    )
    repo.edit("deploy/overlays/staging/kustomization.yaml", "  - release.yaml\n", "  - release.yaml\n  - big.yaml\n")
    promote(repo, "7", DIGEST_4)
    repo.commit("a big ConfigMap in staging and a promotion")

    report = repo.diff()
    full = overlays.to_markdown(report, max_chars=None)
    cut = overlays.to_markdown(report, full_url="https://ci.example/run/1")
    assert len(full) > overlays.GITHUB_COMMENT_LIMIT
    assert len(cut) <= overlays.DEFAULT_MAX_CHARS < overlays.GITHUB_COMMENT_LIMIT
    assert "key02999" in full and "key02999" not in cut
    assert "Cut to fit GitHub's 65,536-character comment limit" in cut
    assert re.search(r"\*\*staging\*\* \([\d,]+ of 3,0\d\d lines\)", cut)
    assert "[the full diff](https://ci.example/run/1)" in cut and "build/diff-full.md" in cut
    # the short production section stays whole; the markup stays balanced
    production = full[full.index("<summary><b>production</b>") : full.index("</details>") + 10]
    assert production in cut
    assert cut.count("<details") == cut.count("</details>")
    assert sum(line.startswith("```") for line in cut.splitlines()) % 2 == 0


def test_unreferenced_file_under_deploy_renders_everything(repo):
    (repo.path / "deploy/overlays/staging/notes.yaml").write_text("kind: Note\n")
    (repo.path / "deploy/README.md").write_text("# deploy\n")
    repo.commit("an unreferenced file")

    report = repo.diff()
    assert [o.name for o in report.overlays] == ["production", "staging", "sandbox"]
    assert "deploy/overlays/staging/notes.yaml" in report.everything
    assert "Every overlay was rendered" in overlays.to_markdown(report)


def test_documentation_and_files_outside_deploy_render_nothing(repo):
    (repo.path / "deploy/README.md").write_text("# deploy\n")
    repo.edit("config/environments.yaml", "min_accuracy: 0.80", "min_accuracy: 0.81")
    repo.commit("docs and a gate")

    report = repo.diff()
    assert report.overlays == [] and report.unaffected == ["production", "staging", "sandbox"]
    assert report.pipelines is None
    assert "No overlay is affected (no file a kustomization reads changed): production, staging, sandbox." in (
        overlays.to_markdown(report)
    )


def test_kustomization_that_does_not_parse_renders_everything(repo):
    (repo.path / "deploy/overlays/staging/kustomization.yaml").write_text("resources: [\n")
    repo.commit("staging kustomization broken")

    report = repo.diff()
    assert "`deploy/overlays/staging/kustomization.yaml` does not parse" in report.everything
    assert {o.name: o.status for o in report.overlays} == {
        "production": "unchanged",
        "staging": "failed",
        "sandbox": "unchanged",
    }


def test_generator_files_are_followed_and_hash_suffixes_paired(repo):
    (repo.path / "deploy/overlays/staging/settings.env").write_text("LOG_LEVEL=info\n")
    repo.edit(
        "deploy/overlays/staging/kustomization.yaml",
        "patches:",
        "configMapGenerator:\n  - name: settings\n    envs: [settings.env]\npatches:",
    )
    repo.commit("staging settings")
    (repo.path / "deploy/overlays/staging/settings.env").write_text("LOG_LEVEL=debug\n")
    repo.commit("debug logging in staging")

    report = repo.diff()
    (staging,) = report.overlays
    assert staging.because == ["deploy/overlays/staging/settings.env"]
    (settings,) = staging.resources
    assert settings.status == "changed" and settings.renamed_from.startswith("settings-")
    assert "+  LOG_LEVEL: debug" in settings.diff


def test_pipeline_change_reports_components_and_parameters(tmp_path):
    repo = make_repo(tmp_path / "repo", folders=("config", "deploy", "src"), files=("pyproject.toml",))
    repo.edit(f"{PACKAGE}/components/ops.py", "    c: float = 1.0,", "    c: float = 0.5,")
    repo.edit(f"{PACKAGE}/pipelines/training_pipeline.py", "max_iter: int = 1000", "max_iter: int = 500")
    repo.commit("train: stronger regularisation by default, fewer iterations")

    report = repo.diff()
    assert report.overlays == []
    pipelines = {p.name: p for p in report.pipelines}
    # the source changed, so the image every component runs changed; nothing else of features
    (make_features,) = pipelines["features"].components
    assert [line.split(" ")[0] for line in make_features.details] == ["image"]
    training = pipelines["training"]
    assert training.status == "changed"
    assert training.parameters == ["`max_iter`: default `1000` → `500`"]
    train = next(c for c in training.components if c.name == "train")
    assert train.status == "changed" and "input `c` default `1.0` → `0.5`" in train.details
    assert train.details[-1].startswith("code `sha256:")
    assert "+    c: float = 0.5," in train.code_diff
    markdown = overlays.to_markdown(report)
    assert "### Compiled pipelines" in markdown and "The project image changes" in markdown
    assert "input `c` default `1.0` → `0.5`" in markdown

    repo.edit(f"{PACKAGE}/components/ops.py", "def train(", "def train(:")
    repo.commit("a syntax error")
    report = repo.diff()
    assert report.failed
    assert {p.name: p.status for p in report.pipelines} == {"features": "failed", "training": "failed"}
    for broken in report.pipelines:
        assert "SyntaxError" in broken.error and "ops.py" in broken.error
    assert "does not compile at head" in overlays.to_markdown(report)


def test_a_feature_change_changes_the_pipelines_and_the_release_image(tmp_path, monkeypatch, capsys):
    """features.py is not part of any compiled component, but of the image they run: a change to it
    must show in the diff as a new image for every pipeline, never as "compiled identically"."""
    repo = make_repo(tmp_path / "repo", folders=("config", "deploy", "src"), files=("pyproject.toml", "Dockerfile"))
    repo.edit(
        f"{PACKAGE}/components/features.py",
        '    frame["log_mean_area"] = np.log1p(frame["mean_area"])',
        '    frame["log_mean_area"] = np.log1p(frame["mean_area"])\n'
        '    frame["log_mean_radius"] = np.log1p(frame["mean_radius"])',
    )
    repo.commit("features: one more column")

    report = repo.diff()
    image = config.load(repo.path).image
    assert report.images["base"].startswith(f"{image}@sha256:") and report.images["head"].startswith(f"{image}@sha256:")
    assert report.images["base"] != report.images["head"]
    assert {p.name: p.status for p in report.pipelines} == {"features": "changed", "training": "changed"}
    for pipeline in report.pipelines:
        for component in pipeline.components:
            assert component.details == [
                f"image `{overlays._short(report.images['base'])}` → `{overlays._short(report.images['head'])}`"
            ]

    monkeypatch.chdir(repo.path)
    assert cli.main(["diff", "--base", "HEAD~1"]) == 0
    markdown = (repo.path / "build/diff.md").read_text()
    assert "The project image changes" in markdown and "Compiled identically" not in markdown
    assert "the next release names this image" in markdown

    # A documentation-only change is no code change: nothing compiles, the image stays.
    (repo.path / "README.md").write_text("docs\n")
    repo.commit("docs")
    assert repo.diff().pipelines is None


def test_unknown_ref_is_one_clear_error(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo.path)
    assert cli.main(["diff", "--base", "no-such-branch"]) == 1
    assert "error: --base 'no-such-branch' is not a commit in " in capsys.readouterr().err
    assert not (repo.path / "build/diff.md").exists()


def test_kustomization_outside_deploy_is_followed(repo):
    shared = repo.path / "shared/labels"
    shared.mkdir(parents=True)
    (shared / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
        "labels:\n  - pairs: {team: ml}\n    includeSelectors: false\n"
    )
    repo.edit(
        "deploy/overlays/staging/kustomization.yaml", "patches:", "components:\n  - ../../../shared/labels\npatches:"
    )
    repo.commit("staging uses a shared component")
    repo.edit("shared/labels/kustomization.yaml", "team: ml", "team: ml-platform")
    repo.commit("rename the team")

    report = repo.diff()
    (staging,) = report.overlays
    assert staging.name == "staging" and staging.because == ["shared/labels/kustomization.yaml"]
    assert staging.status == "changed" and all(r.status == "changed" for r in staging.resources)


def test_project_in_a_folder_of_a_bigger_repository(tmp_path):
    repo = make_repo(tmp_path / "mono")
    project = repo.path / "ml" / "churn"
    project.mkdir(parents=True)
    for folder in ("config", "deploy"):
        repo.git("mv", folder, f"ml/churn/{folder}")
    (repo.path / "README.md").write_text("a monorepo\n")
    repo.commit("move the project into ml/churn")
    repo.edit("ml/churn/deploy/overlays/production/kustomization.yaml", "value: 4", "value: 5")
    repo.commit("production: 5 replicas at most")

    report = overlays.diff_refs(project, "HEAD~1", "HEAD")
    (production,) = report.overlays
    assert production.because == ["deploy/overlays/production/kustomization.yaml"]
    assert any(line.endswith("maxReplicas `4` → `5`") for line in production.headline)
