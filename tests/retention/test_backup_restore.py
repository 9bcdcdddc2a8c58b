"""hetserve backup / restore round trip, SQLite and PostgreSQL: a service with a dataset,
a finished job and its model is backed up, its data folder (and database) wiped and
restored; the same datasets, jobs and models come back, the ONNX file downloads with the
same sha256 and predicts the same."""

from __future__ import annotations

import hashlib
import os
import shutil

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app import cli
from app.db import get_engine
from app.serving.onnx_model import OnnxModel
from tests.support.finished_jobs import finished_job
from tests.support.model_serving import D, exported
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.service_client import AUTH, client_for, make_settings, npz_bytes, tiny_arrays


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path, monkeypatch):
    monkeypatch.setenv("HETSERVE_DATA_DIR", str(tmp_path / "data"))
    if request.param == "sqlite":
        settings = make_settings(tmp_path / "data")
        monkeypatch.setenv("HETSERVE_API_KEYS", settings.api_keys)
        yield settings
        return
    with scratch_redis_postgres(f"backup_{os.getpid()}") as env:
        url = env["HETSERVE_DATABASE_URL"]
        monkeypatch.setenv("HETSERVE_DATABASE_URL", url)
        settings = make_settings(tmp_path / "data", database_url=url)
        monkeypatch.setenv("HETSERVE_API_KEYS", settings.api_keys)
        yield settings
        get_engine(settings).dispose()


def state(client, model_id: str) -> dict:
    onnx = client.get(f"/v1/models/{model_id}/onnx", headers=AUTH)
    assert onnx.status_code == 200
    prediction = client.post(
        f"/v1/models/{model_id}/predict",
        json={"inputs": [[0.1] * D, [0.5] * D], "seed": 0},
        headers=AUTH,
    )
    assert prediction.status_code == 200, prediction.text
    return {
        "datasets": client.get("/v1/datasets", headers=AUTH).json(),
        "jobs": [
            client.get(f"/v1/jobs/{j['id']}", headers=AUTH).json()
            for j in client.get("/v1/jobs", headers=AUTH).json()
        ],
        "models": client.get("/v1/models", headers=AUTH).json(),
        "onnx_sha256": hashlib.sha256(onnx.content).hexdigest(),
        "prediction": prediction.json(),
    }


def wipe(settings) -> None:
    get_engine(settings).dispose()
    shutil.rmtree(settings.data_dir)
    if settings.database_url:
        url = make_url(settings.database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")


def test_backup_wipe_restore(settings, tmp_path, capsys):
    onnx = exported("het")
    with client_for(settings) as client:
        r = client.post(
            "/v1/datasets", files={"file": ("t.npz", npz_bytes(**tiny_arrays()))}, headers=AUTH
        )
        assert r.status_code == 201
        _, model_id, _ = finished_job(
            settings, r.json()["id"], onnx=onnx, meta=OnnxModel(onnx).metadata
        )
        before = state(client, model_id)
    assert len(before["datasets"]) == 1 and len(before["jobs"]) == 1
    assert before["jobs"][0]["status"] == "succeeded" and len(before["jobs"][0]["history"]) == 2
    assert before["onnx_sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()

    backup_dir = tmp_path / "backup"
    assert cli.main(["backup", str(backup_dir)]) == 0, capsys.readouterr().err
    assert "2 artifact file(s)" in capsys.readouterr().out
    assert cli.main(["backup", str(backup_dir)]) == 1  # not into a folder that has one
    assert "not empty" in capsys.readouterr().err

    wipe(settings)
    assert cli.main(["restore", str(backup_dir)]) == 0, capsys.readouterr().err
    with client_for(settings) as client:
        after = state(client, model_id)
    assert after == before
    assert cli.main(["restore", str(backup_dir)]) == 1  # a store is there: --force needed
    assert "--force" in capsys.readouterr().err
    get_engine(settings).dispose()
    assert cli.main(["restore", "--force", str(backup_dir)]) == 0, capsys.readouterr().err


def test_restore_refuses_a_damaged_file(settings, tmp_path, capsys):
    with client_for(settings) as client:
        r = client.post(
            "/v1/datasets", files={"file": ("t.npz", npz_bytes(**tiny_arrays()))}, headers=AUTH
        )
        assert r.status_code == 201
    backup_dir = tmp_path / "backup"
    assert cli.main(["backup", str(backup_dir)]) == 0
    (npz,) = (backup_dir / "artifacts").rglob("*.npz")
    npz.write_bytes(npz.read_bytes() + b"x")
    wipe(settings)
    assert cli.main(["restore", str(backup_dir)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err
