"""DELETE /v1/jobs/{id} in-process: 204 for an ended job (row, history, checkpoints), 404,
409 while queued or running, models only with ?models=true (409 under an alias), a
shared ONNX file kept, a predict-only key refused and audited."""

from __future__ import annotations

import logging

import pytest

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.store import JobHistory, JobStore, ModelStore
from tests.support.finished_jobs import finished_job
from tests.support.service_client import AUTH, client_for, make_settings, npz_bytes, tiny_arrays

PREDICT_KEY = "predict-only-key-0123"


@pytest.fixture
def service(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.api_keys += f",{PREDICT_KEY}:predict"
    with client_for(settings) as client:
        r = client.post(
            "/v1/datasets", files={"file": ("t.npz", npz_bytes(**tiny_arrays()))}, headers=AUTH
        )
        assert r.status_code == 201
        yield client, settings, r.json()["id"]


def history_rows(settings, job_id) -> int:
    with session_scope(settings) as session:
        return len(JobStore(session).history(job_id))


def test_queued_and_running_jobs_are_409_until_cancelled(service):
    client, settings, dataset_id = service
    queued = client.post("/v1/jobs", json={"dataset_id": dataset_id}, headers=AUTH).json()["id"]
    r = client.delete(f"/v1/jobs/{queued}", headers=AUTH)
    assert (
        r.status_code == 409 and "queued" in r.json()["detail"] and "cancel" in r.json()["detail"]
    )

    running = client.post("/v1/jobs", json={"dataset_id": dataset_id}, headers=AUTH).json()["id"]
    with session_scope(settings) as session:
        JobStore(session).start_attempt(running)
    r = client.delete(f"/v1/jobs/{running}", headers=AUTH)
    assert r.status_code == 409 and "running" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{running}", headers=AUTH).status_code == 200

    assert client.post(f"/v1/jobs/{queued}/cancel", headers=AUTH).json()["status"] == "cancelled"
    r = client.delete(f"/v1/jobs/{queued}", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/v1/jobs/{queued}", headers=AUTH).status_code == 404
    assert client.delete(f"/v1/jobs/{queued}", headers=AUTH).status_code == 404


def test_unknown_job_is_404(service):
    client, _, _ = service
    r = client.delete(f"/v1/jobs/{'f' * 32}", headers=AUTH)
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_failed_job_goes_with_its_history_and_checkpoints(service):
    client, settings, dataset_id = service
    job_id, _, _ = finished_job(settings, dataset_id, status="failed")
    checkpoints = ArtifactStore(settings.data_dir).checkpoint_dir(job_id)
    assert checkpoints.is_dir() and history_rows(settings, job_id) == 2
    assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 204
    assert not checkpoints.exists() and history_rows(settings, job_id) == 0
    with session_scope(settings) as session:
        assert session.query(JobHistory).count() == 0
    # the dataset stays
    assert client.get(f"/v1/datasets/{dataset_id}", headers=AUTH).status_code == 200


def test_models_stay_unless_asked_and_a_shared_onnx_file_is_kept(service):
    client, settings, dataset_id = service
    artifacts = ArtifactStore(settings.data_dir)
    job_id, model_id, onnx = finished_job(settings, dataset_id, onnx=b"shared bytes")
    other_job, other_model, other_onnx = finished_job(settings, dataset_id, onnx=b"shared bytes")
    assert onnx == other_onnx  # content-addressed: one file, two models
    lone_job, lone_model, lone_onnx = finished_job(settings, dataset_id, onnx=b"lone bytes")

    r = client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 409 and model_id in r.json()["detail"], r.text
    assert client.get(f"/v1/models/{model_id}", headers=AUTH).status_code == 200

    assert client.delete(f"/v1/jobs/{job_id}?models=true", headers=AUTH).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/models/{model_id}", headers=AUTH).status_code == 404
    assert not artifacts.checkpoint_dir(job_id).exists()
    assert artifacts.resolve(onnx).is_file()  # the other job's model still uses it
    r = client.get(f"/v1/models/{other_model}/onnx", headers=AUTH)
    assert r.status_code == 200 and r.content == b"shared bytes"

    assert client.delete(f"/v1/jobs/{lone_job}?models=true", headers=AUTH).status_code == 204
    assert not artifacts.resolve(lone_onnx).exists()
    assert not list(artifacts.root.rglob(".del-*"))
    assert client.delete(f"/v1/jobs/{other_job}?models=true", headers=AUTH).status_code == 204
    assert not artifacts.resolve(onnx).exists()  # the last reference went


def test_an_alias_on_a_model_refuses_the_delete(service):
    client, settings, dataset_id = service
    job_id, model_id, onnx = finished_job(settings, dataset_id)
    assert client.put(
        "/v1/aliases/production", json={"model_id": model_id}, headers=AUTH
    ).status_code in (200, 201)
    r = client.delete(f"/v1/jobs/{job_id}?models=true", headers=AUTH)
    assert r.status_code == 409 and "production" in r.json()["detail"]
    with session_scope(settings) as session:
        assert ModelStore(session).get(model_id) is not None
    assert history_rows(settings, job_id) == 2
    assert ArtifactStore(settings.data_dir).resolve(onnx).is_file()
    assert ArtifactStore(settings.data_dir).checkpoint_dir(job_id).is_dir()


def test_a_predict_key_is_refused_and_the_delete_audited(service, caplog):
    client, settings, dataset_id = service
    job_id, _, _ = finished_job(settings, dataset_id, status="cancelled")
    with caplog.at_level(logging.INFO, logger="hetserve.audit"):
        r = client.delete(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {PREDICT_KEY}"})
        assert r.status_code == 403
        assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 200
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 204
    lines = [
        (rec.method, rec.status, rec.ids) for rec in caplog.records if rec.name == "hetserve.audit"
    ]
    assert ("DELETE", 403, {}) in lines
    assert ("DELETE", 204, {"job_id": job_id}) in lines


def test_deleting_a_model_removes_its_onnx_and_label_issue_files(service):
    client, settings, dataset_id = service
    artifacts = ArtifactStore(settings.data_dir)
    _, model_id, onnx_path = finished_job(settings, dataset_id)
    issues_path, _ = artifacts.put_bytes(b"label issues of this model", ".issues.npz")
    with session_scope(settings) as session:
        ModelStore(session).get(model_id).label_issues_path = issues_path
    assert artifacts.resolve(issues_path).exists() and artifacts.resolve(onnx_path).exists()
    assert client.delete(f"/v1/models/{model_id}", headers=AUTH).status_code == 204
    assert not artifacts.resolve(issues_path).exists()
    assert not artifacts.resolve(onnx_path).exists()
    assert client.delete(f"/v1/models/{model_id}", headers=AUTH).status_code == 404
