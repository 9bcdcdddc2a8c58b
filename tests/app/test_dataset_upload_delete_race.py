"""Concurrent upload and delete of the same bytes (one content-addressed file): the
delete must never remove the file a concurrent upload's new row refers to."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.support.service_client import AUTH, client_on_store, npz_bytes

ROUNDS = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path):
    with client_on_store(request.param, tmp_path / "data", "race") as service:
        yield service


def test_concurrent_upload_and_delete_of_identical_bytes_keep_every_file(service):
    client, settings = service
    x = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    data = npz_bytes(x_train=x, y_train=np.arange(30) % 2)

    def upload():
        r = client.post("/v1/datasets", files={"file": ("same.npz", data)}, headers=AUTH)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    for _ in range(ROUNDS):
        old = upload()
        barrier = threading.Barrier(2)
        results = {}

        def delete(old=old, barrier=barrier, results=results):
            barrier.wait()
            results["delete"] = client.delete(f"/v1/datasets/{old}", headers=AUTH).status_code

        def add(barrier=barrier, results=results):
            barrier.wait()
            results["add"] = upload()

        threads = [threading.Thread(target=delete), threading.Thread(target=add)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["delete"] == 204 and "add" in results
        for ds in client.get("/v1/datasets", headers=AUTH).json():
            path = settings.data_dir / f"artifacts/{ds['sha256'][:2]}/{ds['sha256']}.npz"
            assert path.exists(), f"dataset {ds['id']} lost its file"
        # Keep one row at most into the next round.
        for ds in client.get("/v1/datasets", headers=AUTH).json():
            assert client.delete(f"/v1/datasets/{ds['id']}", headers=AUTH).status_code == 204
        assert not list((settings.data_dir / "artifacts").rglob("*.npz"))
