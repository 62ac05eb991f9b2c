"""Day one of a real team, end to end on a generated repository, for both promotion patterns.

A team generates "Fraud Scorer", replaces the example model (a scaled logistic regression with
`c`/`max_iter`) by a random forest with `n_estimators`/`max_depth`, editing only its own files
(components, pipelines, config `training.parameters`), and runs the lifecycle: sandbox,
staging, the promotion PR, production. Then it adds a feature column, promotes a second model,
and rolls back across that feature change. Production must serve the right model each time
(a real HTTP prediction with the served model's own input example), every hyperparameter
must reach production's release, and not one engine file may change.

Each pattern is its own xdist group (`--dist loadgroup`): it runs on one worker, beside the
other end-to-end tests. The commands are what the make targets run (`mlrail <command>`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from template_support import generated_repo_env, run_make

PACKAGE = "fraud_scorer"
PRODUCTION = "deploy/overlays/production/release.yaml"
PARAMETERS = {"n_estimators": 100, "max_depth": 8, "seed": 42}
# Files a team may change here; anything else changing would mean the engine was patched.
TEAM_FILES = ("src/", "config/", "deploy/overlays/")

RANDOM_FOREST = '''def train_model(
    frame: pd.DataFrame, n_estimators: int = 100, max_depth: int = 8, seed: int = 42
) -> Pipeline:
    """Fit a random forest on the train split (on named columns: the model checks them)."""
    train = frame[frame[SPLIT] == "train"]
    if train.empty:
        raise ValueError("the features hold no train rows; check test_fraction")
    forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1)
    model = Pipeline([("classify", forest)])
    model.fit(train[feature_columns(frame)], train[TARGET].to_numpy())
    return model


'''


def edit(project: Path, relative: str, old: str, new: str) -> None:
    """One edit a person makes; the test fails naming the file if the template moved on."""
    path = project / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{relative}: expected exactly one {old!r} to edit"
    path.write_text(text.replace(old, new))


def swap_in_a_random_forest(project: Path) -> None:
    components = f"src/{PACKAGE}/components"
    train = (project / components / "train.py").read_text()
    start, end = train.index("def train_model("), train.index("def save_model(")
    (project / components / "train.py").write_text(train[:start] + RANDOM_FOREST + train[end:])
    edit(
        project,
        f"{components}/train.py",
        "from sklearn.linear_model import LogisticRegression\n",
        "from sklearn.ensemble import RandomForestClassifier\n",
    )
    edit(project, f"{components}/train.py", "from sklearn.preprocessing import StandardScaler\n", "")
    old_signature = "    c: float = 1.0,\n    max_iter: int = 1000,\n    seed: int = 42,\n"
    edit(
        project,
        f"{components}/ops.py",
        old_signature,
        "    n_estimators: int = 100,\n    max_depth: int = 8,\n    seed: int = 42,\n",
    )
    edit(
        project,
        f"{components}/ops.py",
        "train_model(frame, c=c, max_iter=max_iter, seed=seed)",
        "train_model(frame, n_estimators=n_estimators, max_depth=max_depth, seed=seed)",
    )
    pipeline = f"src/{PACKAGE}/pipelines/training_pipeline.py"
    edit(
        project,
        pipeline,
        "features_uri: str, c: float = 1.0, max_iter: int = 1000, seed: int = 42",
        "features_uri: str, n_estimators: int = 100, max_depth: int = 8, seed: int = 42",
    )
    edit(
        project,
        pipeline,
        "train(features=features.output, c=c, max_iter=max_iter, seed=seed)",
        "train(features=features.output, n_estimators=n_estimators, max_depth=max_depth, seed=seed)",
    )
    config = yaml.safe_load((project / "config/environments.yaml").read_text())
    old = "\n".join(f"    {name}: {value}" for name, value in config["training"]["parameters"].items())
    new = "\n".join(f"    {name}: {value}" for name, value in PARAMETERS.items())
    edit(project, "config/environments.yaml", old, new)
    commit(project, "Random forest instead of the logistic regression")


def add_a_feature_column(project: Path) -> None:
    anchor = '    frame["concavity_x_points"] = frame["mean_concavity"] * frame["mean_concave_points"]\n'
    added = '    frame["radius_x_texture"] = frame["mean_radius"] * frame["mean_texture"]\n'
    edit(project, f"src/{PACKAGE}/components/features.py", anchor, anchor + added)
    commit(project, "A new feature: radius x texture")


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True).stdout.strip()


def commit(project: Path, message: str) -> None:
    git(project, "add", "-A")
    git(project, "-c", "user.name=team", "-c", "user.email=team@example.com", "commit", "-qm", message)


class Team:
    """The lifecycle commands of the generated repository (what `make <target>` runs)."""

    def __init__(self, project: Path, pattern: str) -> None:
        self.project, self.pattern = project, pattern
        self.env = generated_repo_env()
        self.log = project.parent / "lifecycle.log"

    def mlrail(self, *args: str) -> dict:
        argv = [str(self.project / ".venv/bin/mlrail"), *args, "--json"]
        result = subprocess.run(argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=900)
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(argv)}\n{result.stderr}\n{result.stdout}\n")
        assert result.returncode == 0, f"`mlrail {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}"
        return json.loads(result.stdout)

    def promote(self, staging: dict) -> dict:
        """Merge staging's promotion PR and converge production (retrain: merge its deployment PR)."""
        self.mlrail("merge", "--pr", str(staging["pull_request"]["number"]))
        report = self.mlrail("production")
        proposed = report.get("pull_request")
        if self.pattern == "retrain":
            assert proposed and proposed["branch"].startswith("deploy/"), report
            assert proposed["files"] == [PRODUCTION]
            self.mlrail("merge", "--pr", str(proposed["number"]))
            report = self.mlrail("production")
        return report

    def release(self) -> dict:
        return yaml.safe_load((self.project / PRODUCTION).read_text())["data"]

    def readme_request(self) -> dict:
        """The request body exactly as the generated README makes it (for the staging endpoint)."""
        readme = (self.project / "README.md").read_text()
        (line,) = [line for line in readme.splitlines() if line.startswith("mkdir -p build && .venv/bin/python -c")]
        subprocess.run(["bash", "-euc", line], cwd=self.project, env=self.env, check=True, timeout=300)
        return json.loads((self.project / "build/request.json").read_text())

    def input_example(self) -> dict:
        code = (
            "from mlrail import artifacts, config, serving; cfg = config.load(); env = cfg.env('production'); "
            "model = serving.declared_model(cfg, env); "
            "print(serving.input_example(artifacts.ArtifactStore(env).local_path(model.storage_uri)).model_dump_json())"
        )
        result = subprocess.run(
            [str(self.project / ".venv/bin/python"), "-c", code],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return json.loads(result.stdout)


def infer(endpoint: dict, body: dict) -> tuple[int, dict]:
    url = f"{endpoint['url']}/v2/models/{endpoint['model_name']}/infer"
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def installed_engine_digest(project: Path) -> str:
    """A hash of every file of the engine installed in the project's venv."""
    (package,) = (project / ".venv/lib").glob("python3.*/site-packages/mlrail")
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.deep
@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("transit", marks=pytest.mark.xdist_group("swap-transit")),
        pytest.param("retrain", marks=pytest.mark.xdist_group("swap-retrain")),
    ],
)
def test_a_team_swaps_the_model_and_adds_a_feature_editing_only_its_own_files(pattern, make_project):
    project = make_project(project_name="Fraud Scorer", promotion=pattern)
    assert project.name == "fraud-scorer" and (project / "src" / PACKAGE).is_dir()
    team = Team(project, pattern)
    run_make(project, "bootstrap", env=team.env)
    engine_installed = installed_engine_digest(project)
    generated = git(project, "rev-parse", "HEAD")
    try:
        swap_in_a_random_forest(project)
        sandbox = team.mlrail("sandbox")
        assert sandbox["model"]["metrics"]["accuracy"] > 0.9, sandbox["model"]

        staging = team.mlrail("staging")
        status, answer = infer(staging["endpoint"], team.readme_request())  # the README's way to a prediction
        assert status == 200 and answer["outputs"], answer
        first = team.promote(staging)
        release = team.release()
        assert json.loads(release["parameters"])["training"] == PARAMETERS  # every hyperparameter, none dropped
        assert first["endpoint"]["digest"] == release["modelDigest"]
        first_example = team.input_example()
        status, answer = infer(first["endpoint"], first_example)
        assert status == 200 and answer["outputs"], answer
        columns = {item["name"] for item in first_example["inputs"]}

        add_a_feature_column(project)
        second = team.promote(team.mlrail("staging"))
        assert second["endpoint"]["digest"] == team.release()["modelDigest"] != first["endpoint"]["digest"]
        second_example = team.input_example()
        assert {item["name"] for item in second_example["inputs"]} == columns | {"radius_x_texture"}
        status, answer = infer(second["endpoint"], second_example)
        assert status == 200 and answer["outputs"], answer

        # Roll back across the feature change: the first model again, with its own inputs.
        rollback = team.mlrail("rollback")
        assert rollback["pull_request"]["files"] == [PRODUCTION]
        team.mlrail("merge", "--pr", str(rollback["pull_request"]["number"]))
        after = team.mlrail("production")  # converges and smoke-tests with the served model's example
        assert after["endpoint"]["digest"] == first["endpoint"]["digest"] == team.release()["modelDigest"]
        status, answer = infer(after["endpoint"], team.input_example())
        assert status == 200 and answer["outputs"], answer
        status, answer = infer(after["endpoint"], second_example)  # the new feature: not this model's signature
        assert 400 <= status < 500 and answer, (status, answer)
    finally:
        subprocess.run([str(project / ".venv/bin/mlrail"), "stop"], cwd=project, env=team.env, capture_output=True)

    changed = git(project, "diff", "--name-only", generated, "HEAD").splitlines()
    assert changed and all(path.startswith(TEAM_FILES) for path in changed), changed
    assert installed_engine_digest(project) == engine_installed, "an engine file in the venv changed"
