"""The client against a real service (uvicorn + Celery worker processes): every route
that exists, end to end: upload, train, wait, models, ONNX download, aliases, predict,
and the errors as typed exceptions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import hetserve
from hetserve import Client
from tests.support.blob_datasets import FAST_TRAIN, blobs_npz
from tests.support.service_stack import API_KEY


@pytest.fixture(scope="module")
def client(service_url):
    with Client(service_url, key=API_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def trained(client, tmp_path_factory):
    """A dataset uploaded from a file and a job trained on it, followed with wait()."""
    dataset = client.upload_dataset(blobs_npz(tmp_path_factory.mktemp("d") / "blobs.npz"))
    job = client.submit_job({"dataset_id": dataset["id"], **FAST_TRAIN})
    assert job["status"] == "queued"
    seen = []
    final = client.wait(job["id"], on_progress=seen.append, timeout=180)
    return dataset, final, seen


def test_upload_list_get_delete_datasets(client):
    x = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    dataset = client.upload_arrays(x, np.arange(12) % 2, class_names=["no", "yes"], name="mem")
    assert (dataset["num_train"], dataset["input_shape"], dataset["class_names"]) == (
        12, [3], ["no", "yes"],
    )  # fmt: skip
    assert client.get_dataset(dataset["id"]) == dataset
    assert dataset["id"] in [d["id"] for d in client.list_datasets()]
    client.delete_dataset(dataset["id"])
    with pytest.raises(hetserve.NotFoundError) as caught:
        client.get_dataset(dataset["id"])
    assert caught.value.status_code == 404 and "not found" in caught.value.detail


def test_train_and_wait_reports_progress(client, trained):
    dataset, job, seen = trained
    assert job["status"] == "succeeded", job
    assert job["model_id"] and [h["epoch"] for h in job["history"]][-1] == 2
    assert seen[-1]["status"] == "succeeded"
    assert client.get_job(job["id"])["model_id"] == job["model_id"]
    assert job["id"] in [j["id"] for j in client.list_jobs(status="succeeded")]
    events = list(client.job_events(job["id"]))  # an ended job: one `end` event
    assert [e.event for e in events] == ["end"] and events[0].job["status"] == "succeeded"
    with pytest.raises(hetserve.ConflictError):
        client.cancel_job(job["id"])
    with pytest.raises(hetserve.ConflictError):  # jobs use the dataset
        client.delete_dataset(dataset["id"])


def test_models_onnx_aliases_and_predict(client, trained, tmp_path):
    _, job, _ = trained
    model = client.get_model(job["model_id"])
    assert (model["head"], model["num_classes"], model["input_shape"]) == ("het", 3, [4])
    assert model["id"] in [m["id"] for m in client.list_models(role="model")]

    path = client.download_onnx(model["id"], tmp_path)
    assert path == tmp_path / f"{model['id']}.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model["onnx_sha256"]

    alias = client.set_alias("client-test", model["id"])
    assert alias["model_id"] == model["id"]
    listed = {a["name"]: a["model_id"] for a in client.list_aliases()}
    assert listed["client-test"] == model["id"]

    x = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]], dtype=np.float32)
    result = client.predict("client-test", x, mc_samples=64, seed=7, top_k=2)
    assert result.model_id == model["id"] and result.mc_samples == 64
    assert result.probs.shape == (3, 3) and np.allclose(result.probs.sum(axis=1), 1, atol=1e-4)
    assert result.labels.shape == (3,) and result.entropy.shape == (3,)
    assert result.noise_std.shape == (3, 3) and len(result[0]["top_k"]) == 2
    again = client.predict(model["id"], x.tolist(), mc_samples=64, seed=7, top_k=2)
    assert np.array_equal(again.probs, result.probs)  # same seed, same draws

    with pytest.raises(hetserve.UnprocessableError) as caught:
        client.predict(model["id"], [[1.0, 2.0]])
    assert "inputs" in str(caught.value)
    with pytest.raises(hetserve.ConflictError):  # an alias points at it
        client.delete_model(model["id"])
    client.delete_alias("client-test")
    with pytest.raises(hetserve.NotFoundError):
        client.delete_alias("client-test")


def test_a_wrong_key_is_an_authentication_error(service_url):
    with Client(service_url, key="wrong") as client:
        with pytest.raises(hetserve.AuthenticationError) as caught:
            client.list_models()
    assert caught.value.status_code == 401
    with Client(service_url, key="wrong") as client:
        assert client.health() == {"status": "ok"}  # open routes need no key
