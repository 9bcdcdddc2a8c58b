"""POST/GET /v1/jobs in-process: spec validation, unknown datasets, cancel, events, readiness.

Jobs are sent to the real embedded broker (a SQLite file); no worker runs here, so a job
stays queued (tests/e2e runs real workers).
"""

from __future__ import annotations

import json

import pytest

from app.db import session_scope
from app.store import JobStore
from tests.support.service_client import (
    AUTH,
    client_for,
    make_settings,
    npz_bytes,
    tiny_arrays,
    uploaded,
)


@pytest.fixture
def service(tmp_path):
    settings = make_settings(tmp_path / "data")
    with client_for(settings) as client:
        yield client, settings, uploaded(client, "t.npz", tiny_arrays())["id"]


def job_count(settings) -> int:
    with session_scope(settings) as session:
        return len(JobStore(session).list())


def test_post_job_queues_and_get_returns_it(service):
    client, settings, dataset_id = service
    r = client.post(
        "/v1/jobs", json={"dataset_id": dataset_id, "train": {"epochs": 2}}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["spec"]["task"] == "multiclass"
    assert job["spec"]["train"]["epochs"] == 2 and job["spec"]["head"]["kind"] == "het"
    assert job["progress"] == {"epoch": 0, "epochs": 2, "fraction": 0.0, "phase": None}
    got = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    assert got["status"] == "queued" and got["history"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=AUTH).json()] == [job["id"]]


BAD_SPECS = {
    "S=0 training": ({"head": {"train_mc_samples": 0}}, "train_mc_samples"),
    "S=0 evaluation": ({"head": {"eval_mc_samples": 0}}, "eval_mc_samples"),
    "R<0": ({"head": {"num_factors": -1}}, "num_factors"),
    "tau=0": ({"head": {"temperature": 0}}, "temperature"),
    "unknown temperature word": ({"head": {"temperature": "hot"}}, "temperature"),
    "zero epochs": ({"train": {"epochs": 0}}, "epochs"),
    "unknown head": ({"head": {"kind": "bayes"}}, "kind"),
    "unknown field": ({"learning_rate": 0.1}, "learning_rate"),
    "infinite weight decay": ({"train": {"weight_decay": "Infinity"}}, "weight_decay"),
    "inverted temperature bounds": (
        {"head": {"temperature_bounds": [3.0, 0.3]}},
        "temperature_bounds",
    ),
    "a layer of a billion units": ({"backbone": {"hidden": [10**9]}}, "hidden"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_invalid_spec_is_422_naming_the_field(service, case):
    client, settings, dataset_id = service
    extra, field = BAD_SPECS[case]
    r = client.post("/v1/jobs", json={"dataset_id": dataset_id, **extra}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in json.dumps(r.json()["detail"])
    assert job_count(settings) == 0


def test_unknown_dataset_is_422(service):
    client, settings, _ = service
    r = client.post("/v1/jobs", json={"dataset_id": "f" * 32}, headers=AUTH)
    assert (
        r.status_code == 422
        and "f" * 32 in r.json()["detail"]
        and "not found" in r.json()["detail"]
    )
    assert job_count(settings) == 0


def test_backbone_and_task_must_fit_the_dataset(service):
    client, settings, dataset_id = service
    r = client.post(
        "/v1/jobs", json={"dataset_id": dataset_id, "backbone": {"kind": "cnn"}}, headers=AUTH
    )
    assert r.status_code == 422 and "vectors" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"dataset_id": dataset_id, "task": "multilabel"}, headers=AUTH)
    assert r.status_code == 422 and "multiclass" in r.json()["detail"]
    assert job_count(settings) == 0


def test_a_noise_draw_too_large_for_a_worker_is_422(service):
    client, settings, dataset_id = service
    per_example = {
        "share_samples_across_batch": False,
        "eval_mc_samples": 100_000,
        "num_factors": 64,
    }
    r = client.post("/v1/jobs", json={"dataset_id": dataset_id, "head": per_example}, headers=AUTH)
    assert r.status_code == 422 and "per example" in r.json()["detail"], r.text
    # The same S shared across the batch is a few MB: accepted.
    shared = per_example | {"share_samples_across_batch": True}
    r = client.post("/v1/jobs", json={"dataset_id": dataset_id, "head": shared}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert job_count(settings) == 1


def test_cancel_a_queued_job_ends_it_and_events_report_the_end(service):
    client, _, dataset_id = service
    job_id = client.post("/v1/jobs", json={"dataset_id": dataset_id}, headers=AUTH).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert (
        r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["cancel_requested"]
    )
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 202  # idempotent
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        body = "".join(events.iter_text())
    assert body.startswith("event: end\ndata: ")
    assert json.loads(body.split("data: ", 1)[1])["status"] == "cancelled"


def test_unknown_job_is_404_and_auth_is_required(service):
    client, _, _ = service
    for method, path in (
        ("get", "/v1/jobs/nope"),
        ("post", "/v1/jobs/nope/cancel"),
        ("get", "/v1/jobs/nope/events"),
    ):
        assert getattr(client, method)(path, headers=AUTH).status_code == 404
        assert getattr(client, method)(path).status_code == 401
    assert client.post("/v1/jobs", json={"dataset_id": "x"}).status_code == 401


def test_readyz_is_200_with_embedded_services(tmp_path):
    # no free-space floor: the machine's own free space must not decide this test
    with client_for(make_settings(tmp_path / "data", min_free_bytes=0)) as client:
        r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {
        "status": "ready",
        "store": "ok",
        "broker": "ok",
        "data_dir": "ok",
        "model_files": "ok",
        "disk_space": "ok",
    }


def test_unreachable_broker_gives_503_on_readyz_and_post(tmp_path):
    settings = make_settings(tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    with client_for(settings) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["store"] == "ok" and r.json()["broker"] != "ok"
        ds = client.post(
            "/v1/datasets", files={"file": ("t.npz", npz_bytes(**tiny_arrays()))}, headers=AUTH
        )
        r = client.post("/v1/jobs", json={"dataset_id": ds.json()["id"]}, headers=AUTH)
        assert r.status_code == 503 and "broker" in r.json()["detail"]
        (job,) = client.get("/v1/jobs", headers=AUTH).json()
        assert job["status"] == "failed" and "broker" in job["error"]


def test_unreachable_store_gives_503_on_readyz(tmp_path):
    settings = make_settings(
        tmp_path / "data",
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        auto_migrate=False,
    )
    with client_for(settings) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["store"] != "ok"


def test_store_registers_once_and_never_restarts_an_ended_job(service):
    """What makes redelivery safe: UNIQUE(job_id, role) registration and start_attempt
    refusing a job that already ended."""
    from app.store import ModelStore

    client, settings, dataset_id = service
    job_id = client.post("/v1/jobs", json={"dataset_id": dataset_id}, headers=AUTH).json()["id"]
    fields = dict(
        head="het", task="multiclass", input_shape=[3], num_classes=2, class_names=["0", "1"],
        metrics={}, onnx_path="artifacts/x.onnx", onnx_sha256="0" * 64,
    )  # fmt: skip
    with session_scope(settings) as session:
        jobs = JobStore(session)
        assert jobs.start_attempt(job_id).attempts == 1
        assert jobs.start_attempt(job_id).attempts == 2  # a redelivery resumes a running job
        first = ModelStore(session).register(job_id, "model", **fields).id
        assert ModelStore(session).register(job_id, "model", **fields).id == first
        assert jobs.finish(job_id, "succeeded", model_id=first) is True
    with session_scope(settings) as session:
        assert JobStore(session).start_attempt(job_id) is None
        assert ModelStore(session).count_for_job(job_id) == 1
        # A duplicate attempt failing later must not overwrite the finished outcome.
        assert JobStore(session).finish(job_id, "failed", error="late duplicate") is False
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        assert (job.status, job.model_id, job.error) == ("succeeded", first, None)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 409
