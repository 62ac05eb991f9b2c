"""The Argo CD + KServe emulator end to end: a sync renders the overlay at the synced revision,
KServe downloads the storage URI from S3 (a moto server) and MLServer serves it; sync.ArgoCd
reports the InferenceService's URL, which answers v2 inference."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from moto.server import ThreadedMotoServer
from sklearn.linear_model import LogisticRegression

from mlrail import serving
from mlrail.artifacts import directory_digest
from mlrail.cluster import sync
from mlrail.cluster.http import Timeouts
from sim import closed_port
from sim.argocd import Application, ArgoCdEmulator, KServeEmulator, applications_from_repository, s3_downloader
from sim.github_api import git, seed_repository

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the overlays")

TOKEN = "argocd-sim-token"
OVERLAY = "deploy/overlays/staging"
NAMESPACE = "churn-classifier-staging"
KUSTOMIZATION = f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {NAMESPACE}
resources: [isvc.yaml]
"""
ISVC = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: churn-classifier
  annotations: {"mlops/model-version": "%s"}
spec:
  predictor:
    model:
      modelFormat: {name: mlflow}
      protocolVersion: v2
      storageUri: %s
"""


def _model(directory: Path, flip: bool) -> Path:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.random(60), "b": rng.random(60)})
    target = ((frame["a"] > 0.5) != flip).astype(int)
    model = LogisticRegression().fit(frame, target)
    mlflow.sklearn.save_model(
        model,
        str(directory),
        serialization_format="pickle",
        signature=infer_signature(frame, model.predict(frame)),
        input_example=frame.head(3),
        pip_requirements=["scikit-learn"],
    )
    return directory


@pytest.fixture(scope="module")
def s3():
    port = closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    client.create_bucket(Bucket="staging-models")
    yield url, client
    server.stop()


def _upload(client, directory: Path, prefix: str) -> str:
    for file in directory.rglob("*"):
        if file.is_file():
            client.upload_file(str(file), "staging-models", f"{prefix}/{file.relative_to(directory).as_posix()}")
    return f"s3://staging-models/{prefix}"


def test_sync_serves_the_storage_uri_named_at_the_synced_revision(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    url, client = s3
    first_dir, second_dir = _model(tmp_path / "m1", flip=False), _model(tmp_path / "m2", flip=True)
    first_uri, second_uri = _upload(client, first_dir, "churn/1"), _upload(client, second_dir, "churn/2")
    bare = tmp_path / "origin.git"
    seed_repository(
        bare, {f"{OVERLAY}/kustomization.yaml": KUSTOMIZATION, f"{OVERLAY}/isvc.yaml": ISVC % (1, first_uri)}
    )
    first = git(bare, "rev-parse", "main")
    kserve = KServeEmulator(tmp_path / "kserve", downloaders={"s3": s3_downloader(url)})
    app = Application("churn-classifier-staging", OVERLAY, NAMESPACE)
    with ArgoCdEmulator(bare, [app], kserve, tokens={TOKEN}) as argocd:
        client_argo = sync.ArgoCd("staging", argocd.url, TOKEN, poll_seconds=0.1, timeouts=Timeouts(2, 10, 30))
        result = client_argo.sync(app.name, first, timeout=120)
        served = kserve.served[(NAMESPACE, "churn-classifier")]
        assert result.url == served.url and result.url.startswith("http://127.0.0.1:")
        assert served.storage_uri == first_uri and served.digest == directory_digest(first_dir)
        example = serving.input_example(first_dir)
        assert serving.predict(result.url, "churn-classifier", example) is not None

        # a later commit names the second model; syncing the first commit again serves the first
        index_env = {"GIT_INDEX_FILE": str(tmp_path / "index")}
        git(bare, "read-tree", "main", env=index_env)
        blob = git(bare, "hash-object", "-w", "--stdin", input_text=ISVC % (2, second_uri))
        git(bare, "update-index", "--cacheinfo", f"100644,{blob},{OVERLAY}/isvc.yaml", env=index_env)
        tree = git(bare, "write-tree", env=index_env)
        ident = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@x",
        }
        second = git(bare, "commit-tree", tree, "-p", first, "-m", "promote v2", env=ident)
        git(bare, "update-ref", "refs/heads/main", second)
        assert client_argo.sync(app.name, second, timeout=120).url
        assert kserve.served[(NAMESPACE, "churn-classifier")].digest == directory_digest(second_dir)
        client_argo.sync(app.name, first, timeout=120)
        assert kserve.served[(NAMESPACE, "churn-classifier")].digest == directory_digest(first_dir)
        assert [uri for _, uri in kserve.downloads] == [first_uri, second_uri, first_uri]

        # a storage URI with nothing behind it: Degraded, with the storage initializer's reason
        missing = ISVC % (3, "s3://staging-models/churn/404")
        blob = git(bare, "hash-object", "-w", "--stdin", input_text=missing)
        git(bare, "update-index", "--cacheinfo", f"100644,{blob},{OVERLAY}/isvc.yaml", env=index_env)
        third = git(bare, "commit-tree", git(bare, "write-tree", env=index_env), "-p", second, "-m", "v3", env=ident)
        with pytest.raises(
            sync.SyncError, match=r"Degraded: InferenceService/churn-classifier: .*No model found in s3://"
        ):
            client_argo.sync(app.name, third, timeout=120)


def test_applications_come_from_the_repositorys_argocd_folder(tmp_path):
    argocd_dir = {
        "deploy/argocd/kustomization.yaml": "resources: [set.yaml, production.yaml]\n",
        "deploy/argocd/set.yaml": """apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata: {name: p}
spec:
  generators: [{list: {elements: [{env: sandbox}, {env: staging}]}}]
  template:
    metadata: {name: 'p-{{ .env }}'}
    spec:
      project: p
      source: {repoURL: https://github.com/o/p.git, targetRevision: main, path: 'deploy/overlays/{{ .env }}'}
      destination: {server: https://kubernetes.default.svc, namespace: 'p-{{ .env }}'}
""",
        "deploy/argocd/production.yaml": """apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: p-production}
spec:
  project: p
  source: {repoURL: https://github.com/o/p.git, targetRevision: main, path: deploy/overlays/production}
  destination: {server: https://kubernetes.default.svc, namespace: p-production}
""",
    }
    bare = tmp_path / "origin.git"
    seed_repository(bare, argocd_dir)
    apps = {app.name: (app.path, app.namespace) for app in applications_from_repository(bare)}
    assert apps == {
        "p-sandbox": ("deploy/overlays/sandbox", "p-sandbox"),
        "p-staging": ("deploy/overlays/staging", "p-staging"),
        "p-production": ("deploy/overlays/production", "p-production"),
    }
