"""The lifecycle commands on a fresh repository: what each says before any model exists, and one
clear error line (exit 1) for every mistake. Fast: nothing here trains or serves."""

import pytest

import lifecycle_support as support
from mlrail import cli

blank_registry_db = support.blank_registry_db
lifecycle = support.lifecycle


@pytest.fixture()
def fresh(lifecycle):
    return lifecycle("transit")


def run(capsys, *argv):
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_before_any_model(fresh, capsys):
    assert run(capsys, "prs")[:2] == (0, "no pull requests yet\n")
    code, out, _ = run(capsys, "production")
    assert code == 0 and "declares no model yet (modelVersion: none): nothing to serve" in out
    code, out, _ = run(capsys, "status")
    assert code == 0 and "| production | 0 |" in out and "| sandbox | 0 |" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["merge", "--pr", "7"], "error: pull request #7 does not exist (known: none yet)"),
        (["rollback"], "error: nothing to roll back to"),
        (["promote"], "error: staging has no challenger: run `make staging`"),
        (["staging", "--param", "c=zero"], "error: --param c is 'zero'; expected a float"),
        (
            ["sandbox", "--param", "n_estimators=200"],
            "error: --param n_estimators is not a parameter of churn_classifier.pipelines:training_pipeline; "
            "it takes c, max_iter, seed",
        ),
    ],
)
def test_mistakes_are_one_line_and_exit_1(fresh, capsys, argv, message):
    """A parameter the pipeline does not declare fails before anything runs (issue 9: it reached
    the pipeline as an unexpected keyword argument)."""
    code, out, err = run(capsys, *argv)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and errors[0].startswith(message) and "Traceback" not in err


def test_staging_trains_committed_code_only(fresh, capsys):
    (fresh.root / "src").mkdir()
    (fresh.root / "src" / "idea.py").write_text("FEATURE = 1\n")
    code, _, err = run(capsys, "staging")
    assert code == 1 and "staging trains committed code only, but src/idea.py has uncommitted changes" in err


def test_the_pull_request_backend_is_config(fresh, capsys, monkeypatch):
    """`pull_requests:` in config chooses the backend (default: github when production runs on a
    cluster, else local); an environment variable no longer does."""
    from mlrail import config, gitops

    monkeypatch.setenv("MLOPS_PULL_REQUESTS", "github")
    assert gitops.backend_name(config.load(fresh.root)) == "local"
    path = fresh.root / "config" / "environments.yaml"
    text = path.read_text()
    path.write_text(text.replace("\npipelines:", "\npull_requests: gitea\npipelines:", 1))
    code, _, err = run(capsys, "prs")
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("pull_requests:"))
    assert code == 1 and f"config/environments.yaml:{line}: pull_requests: " in err and "'local'" in err, err
    path.write_text(text.replace("\npipelines:", "\npull_requests: github\npipelines:", 1))
    assert gitops.backend_name(config.load(fresh.root)) == "github"
