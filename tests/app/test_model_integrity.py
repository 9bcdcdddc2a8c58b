"""A model file that no longer matches its recorded sha256 is refused (409), logged with
the model's id and listed by /readyz; a file is hashed once per (path, mtime, size)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving import sessions
from tests.support.model_serving import AUTH, D, exported, make_settings, register


@pytest.fixture
def service(tmp_path):
    settings = make_settings(tmp_path / "data")
    model_id = register(settings, exported("het"))
    with TestClient(create_app(settings)) as client:
        yield client, settings, model_id


def stored_file(settings, client, model_id):
    from app.artifacts import ArtifactStore
    from app.db import session_scope
    from app.store import Model

    with session_scope(settings) as session:
        path = ArtifactStore(settings.data_dir).resolve(session.get(Model, model_id).onnx_path)
    path.chmod(0o644)  # the test rewrites it
    return path


def predict(client, model_id):
    return client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0.1] * D]}, headers=AUTH)


def test_a_corrupted_model_file_is_409_on_predict_and_download(service, caplog):
    client, settings, model_id = service
    path = stored_file(settings, client, model_id)
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one bit pattern off

    with caplog.at_level(logging.ERROR, logger="hetserve.serving"):
        r = predict(client, model_id)
        assert r.status_code == 409, r.text
        assert r.json() == {"detail": "model file failed its integrity check"}
        r = client.get(f"/v1/models/{model_id}/onnx", headers=AUTH)
        assert r.status_code == 409 and r.json()["detail"] == sessions.INTEGRITY_DETAIL
    lines = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert lines and all(model_id in rec.getMessage() for rec in lines)
    ready = client.get("/readyz").json()
    assert ready["model_files"] == {"failed_integrity": [model_id]}

    path.write_bytes(original)  # restored: served again, and /readyz forgets it
    assert predict(client, model_id).status_code == 200
    r = client.get(f"/v1/models/{model_id}/onnx", headers=AUTH)
    assert r.status_code == 200 and r.content == original
    assert client.get("/readyz").json()["model_files"] == "ok"


def test_a_file_is_hashed_once_per_version(service, monkeypatch):
    client, settings, model_id = service
    calls = []
    real = sessions.sha256_file
    monkeypatch.setattr(sessions, "sha256_file", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        assert predict(client, model_id).status_code == 200
        assert client.get(f"/v1/models/{model_id}/onnx", headers=AUTH).status_code == 200
    assert len(calls) == 1
