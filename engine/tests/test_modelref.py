import pytest

from mlrail.modelref import ModelRef, ModelRefError, read_model_ref, write_model_ref

DIGEST = "sha256:" + "ab" * 32


def ref(version="3", **changes):
    values = dict(
        name="churn-classifier",
        version=version,
        digest=DIGEST,
        storage_uri="file:///stores/staging/models/sha256-" + "ab" * 32,
        source="staging registry version 3",
    )
    values.update(changes)
    return ModelRef(**values)


def test_generated_overlays_declare_an_empty_model(project_copy):
    for env in ("sandbox", "staging", "production"):
        found = read_model_ref(project_copy / "deploy" / "overlays" / env)
        assert found.is_empty and found.name == "churn-classifier"


def test_write_keeps_header_roundtrips_and_is_idempotent(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "production"
    header = (overlay / "model.yaml").read_text().split("apiVersion")[0]
    assert write_model_ref(overlay, ref()) is True
    text = (overlay / "model.yaml").read_text()
    assert text.startswith(header) and 'version: "3"' in text  # quoted: stays a string for kustomize
    assert read_model_ref(overlay) == ref()
    assert write_model_ref(overlay, ref()) is False  # byte-identical: nothing written
    assert write_model_ref(overlay, ModelRef.empty("churn-classifier")) is True
    assert read_model_ref(overlay).is_empty
    assert not list(overlay.glob(".*.partial"))


def test_values_that_yaml_would_misread_are_quoted(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    odd = ref(source="yes: #1 [x]")
    write_model_ref(overlay, odd)
    assert read_model_ref(overlay) == odd


def test_hand_written_unquoted_version_is_read_as_text(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    write_model_ref(overlay, ref())
    path = overlay / "model.yaml"
    path.write_text(path.read_text().replace('version: "3"', "version: 3"))
    assert read_model_ref(overlay).version == "3"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("kind: ConfigMap", "kind: Secret"), "ConfigMap named 'model'"),
        (lambda t: t.replace("  digest: none\n", ""), "data.digest is missing"),
        (lambda t: t.replace("version: none", "version: latest"), "expected a registry version number"),
        (lambda t: t.replace("version: none", "version: 2"), "expected sha256"),
        (lambda t: t + "  : [\n", "not valid YAML"),
    ],
)
def test_malformed_reference_is_one_clear_error(project_copy, edit, message):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    path = overlay / "model.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ModelRefError, match=message):
        read_model_ref(overlay)


def test_missing_file_and_invalid_reference_are_refused(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    (overlay / "model.yaml").unlink()
    with pytest.raises(ModelRefError, match="is missing"):
        read_model_ref(overlay)
    with pytest.raises(ModelRefError, match="data.digest"):
        write_model_ref(overlay, ref(digest="md5:1"))
    assert not (overlay / "model.yaml").exists()  # nothing half-written
