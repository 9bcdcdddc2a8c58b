"""A model and a dataset that share one artifact file, deleted at the same time while
an upload of the same bytes adds a new reference: every caller removes a file through
app/artifact_release.py under the artifact's lock, counting the references in every
table, so nothing referenced is deleted and nothing unreferenced is left."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.store import Dataset, JobStore, ModelStore, referenced_artifacts
from tests.support.service_client import AUTH, client_on_store, npz_bytes

ROUNDS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path):
    with client_on_store(request.param, tmp_path / "data", "release") as service:
        yield service


def upload(client, data: bytes) -> str:
    r = client.post("/v1/datasets", files={"file": ("same.npz", data)}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def model_referring_to(settings, training_dataset_id: str, shared_dataset_id: str) -> str:
    """A registered model (of a job on another dataset) whose file is the shared dataset's."""
    with session_scope(settings) as session:
        path = session.get(Dataset, shared_dataset_id).artifact_path
        jobs = JobStore(session)
        job = jobs.create(training_dataset_id, {"head": {"kind": "het"}})
        jobs.start_attempt(job.id)
        model = ModelStore(session).register(
            job.id,
            "model",
            head="het",
            task="multiclass",
            input_shape=[3],
            num_classes=2,
            class_names=["0", "1"],
            metrics={},
            onnx_path=path,
            onnx_sha256="0" * 64,
        )
        jobs.finish(job.id, "succeeded", metrics={}, model_id=model.id)
        return model.id


def files_on_disk(settings) -> set[str]:
    root = settings.data_dir
    return {
        p.relative_to(root).as_posix()
        for p in (root / "artifacts").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


# Who acts in a round, at once: each round deletes the dataset; the model is deleted too,
# or stays (and is deleted after the check); an upload of the same bytes registers a new
# reference, or not.
MODES = [
    {"model": True, "upload": True},
    {"model": True, "upload": False},
    {"model": False, "upload": True},
    {"model": False, "upload": False},
]


def test_deleting_a_model_and_a_dataset_that_share_a_file_during_an_upload(service):
    client, settings = service
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 3)).astype(np.float32)
    shared = npz_bytes(x_train=x, y_train=np.arange(30) % 2)
    training = upload(client, npz_bytes(x_train=x + 1, y_train=np.arange(30) % 2))
    for round_ in range(ROUNDS):
        mode = MODES[round_ % len(MODES)]
        dataset = upload(client, shared)
        model = model_referring_to(settings, training, dataset)
        urls = {"dataset": f"/v1/datasets/{dataset}"}
        if mode["model"]:
            urls["model"] = f"/v1/models/{model}"
        barrier = threading.Barrier(len(urls) + mode["upload"])
        answers: dict[str, object] = {}

        def delete(key, url, barrier=barrier, answers=answers):
            barrier.wait()
            answers[key] = client.delete(url, headers=AUTH).status_code

        def register(barrier=barrier, answers=answers):
            barrier.wait()
            answers["upload"] = upload(client, shared)

        threads = [threading.Thread(target=delete, args=item) for item in urls.items()]
        if mode["upload"]:
            threads.append(threading.Thread(target=register))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(answers[key] == 204 for key in urls) and len(answers) == len(threads), answers
        with session_scope(settings) as session:
            referenced = referenced_artifacts(session)
            rows = session.scalars(select(Dataset.id).where(Dataset.id != training))
            assert list(rows) == ([answers["upload"]] if mode["upload"] else [])
        # Nothing referenced is deleted, nothing unreferenced is left.
        assert files_on_disk(settings) == referenced, f"round {round_}: {mode}"
        # The next round starts with the shared file unreferenced and gone.
        if not mode["model"]:
            assert client.delete(f"/v1/models/{model}", headers=AUTH).status_code == 204
        if mode["upload"]:
            url = f"/v1/datasets/{answers['upload']}"
            assert client.delete(url, headers=AUTH).status_code == 204
        with session_scope(settings) as session:
            assert files_on_disk(settings) == referenced_artifacts(session), f"round {round_}"
            assert len(referenced_artifacts(session)) == 1  # the training dataset's
