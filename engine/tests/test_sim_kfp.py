"""The KFP API emulator of the cluster simulation, driven by kfp.Client itself: the endpoints the
engine uses answer as KFP's v2beta1 API does, and runs really execute the example project's
components, reading and writing artifacts under an s3:// pipeline root."""

import json
import warnings

import kfp
import pytest
from kfp_server_api.exceptions import ApiException

from mlrail import config
from mlrail.compile import compile_all
from sim.kfp_api import TOKEN, kfp_emulator_fixture
from sim.storage import environment_buckets, s3_emulator  # noqa: F401 - the module's S3 server

kfp_emulator = kfp_emulator_fixture()
BUCKET = "churn-classifier-staging-models"
ROOT = f"s3://{BUCKET}/pipeline-root"
NAMESPACE = "churn-classifier-staging"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    cfg = config.load(__import__("example").ROOT)
    return compile_all(cfg.load_pipelines(), tmp_path_factory.mktemp("compiled"))


@pytest.fixture()
def client(kfp_emulator, s3_emulator, project_copy):  # noqa: F811
    s3_emulator.reset(environment_buckets(config.load()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=kfp_emulator.url, namespace=NAMESPACE, existing_token=TOKEN)


def run_and_wait(client, version, params, name="run"):
    experiment = client.create_experiment(NAMESPACE, namespace=NAMESPACE)
    run = client.run_pipeline(
        experiment_id=experiment.experiment_id,
        job_name=name,
        params=params,
        pipeline_id=version.pipeline_id,
        version_id=version.pipeline_version_id,
        pipeline_root=ROOT,
    )
    return client.wait_for_run_completion(run.run_id, timeout=120, sleep_duration=0.2)


def test_healthz_and_the_bearer_token(client, kfp_emulator):
    assert client.get_kfp_healthz().multi_user is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stranger = kfp.Client(host=kfp_emulator.url, namespace=NAMESPACE, existing_token="wrong")
    with pytest.raises(ApiException) as caught:
        stranger.list_experiments(namespace=NAMESPACE)
    assert caught.value.status == 401


def test_pipelines_versions_and_their_lookups(client, kfp_emulator, packages, capsys):
    shared = client.upload_pipeline(str(packages["features"]), pipeline_name="churn-classifier-features")
    assert client.get_pipeline_id("churn-classifier-features") == shared.pipeline_id
    # A namespaced pipeline is not what get_pipeline_id (no namespace: shared ones) finds.
    private = client.upload_pipeline(str(packages["training"]), pipeline_name="private", namespace=NAMESPACE)
    assert client.get_pipeline_id("private") is None
    assert [p.pipeline_id for p in client.list_pipelines(namespace=NAMESPACE).pipelines] == [private.pipeline_id]
    with pytest.raises(ApiException) as caught:
        client.upload_pipeline(str(packages["features"]), pipeline_name="churn-classifier-features")
    assert caught.value.status == 409
    version = client.upload_pipeline_version(
        str(packages["features"]), "0123456789ab", pipeline_id=shared.pipeline_id, description="sha256:x"
    )
    named = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": "0123456789ab"}]})
    listed = client.list_pipeline_versions(shared.pipeline_id, filter=named).pipeline_versions
    assert [(v.pipeline_version_id, v.description) for v in listed] == [(version.pipeline_version_id, "sha256:x")]
    assert client.list_pipeline_versions(shared.pipeline_id).total_size == 2  # the initial one and the commit's
    fetched = client.get_pipeline_version(shared.pipeline_id, version.pipeline_version_id)
    assert fetched.pipeline_spec["pipelineInfo"]["name"] == "churn-classifier-features"
    assert "Pipeline details" in capsys.readouterr().out  # kfp.Client printed its links, as against KFP


def test_runs_execute_the_components_and_write_artifacts_under_the_pipeline_root(
    client,
    kfp_emulator,
    s3_emulator,  # noqa: F811
    packages,
):
    features = client.upload_pipeline(str(packages["features"]))
    versions = client.list_pipeline_versions(features.pipeline_id).pipeline_versions
    done = run_and_wait(client, versions[0], {"seed": 7}, name="features-1")
    assert done.state == "SUCCEEDED", done.error
    tasks = {t.display_name: t for t in done.run_details.task_details}
    assert set(tasks) == {"make features", "root"}
    dataset_id = tasks["make features"].outputs["features"].artifact_ids[0]
    assert tasks["root"].outputs["Output"].artifact_ids == [dataset_id]
    uri = kfp_emulator.artifacts[dataset_id]["uri"]
    assert uri.startswith(f"{ROOT}/churn-classifier-features/{done.run_id}/make-features/")
    table = s3_emulator.read(uri).decode()
    assert table.count("\n") > 10  # a real feature table, written by the team's component

    training = client.upload_pipeline(str(packages["training"]))
    version = client.list_pipeline_versions(training.pipeline_id).pipeline_versions[0]
    done = run_and_wait(client, version, {"features_uri": uri}, name="training-1")
    assert done.state == "SUCCEEDED", done.error
    tasks = {t.display_name: t for t in done.run_details.task_details}
    assert set(tasks) == {"import features", "train", "evaluate", "root"}
    assert tasks["import features"].outputs["artifact"].artifact_ids == [dataset_id]  # reimport: false
    assert tasks["train"].inputs["features"].artifact_ids == [dataset_id]
    model_uri = kfp_emulator.artifacts[tasks["train"].outputs["model"].artifact_ids[0]]["uri"]
    bucket_key = model_uri[len(f"s3://{BUCKET}/") :]
    assert s3_emulator.keys(BUCKET, bucket_key + "/")  # the model directory, uploaded object by object
    metrics_uri = kfp_emulator.artifacts[tasks["evaluate"].outputs["metrics"].artifact_ids[0]]["uri"]
    metrics = json.loads(s3_emulator.read(metrics_uri))
    assert metrics and all(isinstance(v, (int, float)) for v in metrics.values())


def test_a_task_that_cannot_read_its_input_fails_the_run_with_the_reason(client, packages):
    training = client.upload_pipeline(str(packages["training"]))
    version = client.list_pipeline_versions(training.pipeline_id).pipeline_versions[0]
    done = run_and_wait(client, version, {"features_uri": f"{ROOT}/nowhere/features"}, name="broken")
    assert done.state == "FAILED"
    assert "failed to download input artifact 'features'" in done.error.message
    failed = [t for t in done.run_details.task_details if t.state == "FAILED"]
    assert [t.display_name for t in failed] == ["train"]


def test_a_run_with_an_unknown_parameter_is_refused(client, packages):
    pipeline = client.upload_pipeline(str(packages["features"]))
    version = client.list_pipeline_versions(pipeline.pipeline_id).pipeline_versions[0]
    experiment = client.create_experiment(NAMESPACE, namespace=NAMESPACE)
    with pytest.raises(ApiException) as caught:
        client.run_pipeline(
            experiment_id=experiment.experiment_id,
            job_name="bad",
            params={"n_estimators": 3},
            pipeline_id=pipeline.pipeline_id,
            version_id=version.pipeline_version_id,
            pipeline_root=ROOT,
        )
    assert caught.value.status == 400 and "n_estimators" in caught.value.body


def test_a_run_from_a_package_and_the_run_list_filters(client, packages):
    result = client.create_run_from_pipeline_package(
        str(packages["features"]),
        arguments={},
        run_name="inline",
        experiment_name=NAMESPACE,
        namespace=NAMESPACE,
        pipeline_root=ROOT,
    )
    assert result.wait_for_run_completion(timeout=120).state == "SUCCEEDED"
    experiment = client.get_experiment(experiment_name=NAMESPACE, namespace=NAMESPACE)
    named = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": "inline"}]})
    runs = client.list_runs(experiment_id=experiment.experiment_id, filter=named).runs
    assert [r.run_id for r in runs] == [result.run_id]
    assert client.list_runs(experiment_id=experiment.experiment_id, filter=named.replace("inline", "x")).runs is None
