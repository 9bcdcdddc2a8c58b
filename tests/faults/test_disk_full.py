"""A full data volume (a 40 MB tmpfs), with a real API process and a real worker, on the
embedded stores (the SQLite store and broker on the full volume too) and on PostgreSQL
+ Redis: uploads are refused with a 507 in JSON and leave nothing behind, a training job
fails naming "no space left" (never stranded ``running``), deletes work while the volume
is full, ``/readyz`` reports the low space, and the worker trains again once there is room.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from app import disk_space
from tests.support.model_serving import API_KEY, AUTH, live_server
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.service_client import AUTH as CLIENT_AUTH
from tests.support.service_client import client_for, make_settings, npz_bytes, tiny_arrays
from tests.support.waiting import wait_until
from tests.support.worker_process import SLOW, base_env, start_worker, stop

VOLUME = "40m"
UPLOAD_ROWS, UPLOAD_FEATURES = 400, 2000  # 3.2 MB of float32 per upload, incompressible
MIN_FREE = 8 * 1024 * 1024


@contextlib.contextmanager
def small_volume(path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def npz_upload(seed: int, rows: int = UPLOAD_ROWS, features: int = UPLOAD_FEATURES) -> bytes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=rows)
    x = (rng.normal(size=(rows, features)) + 1.5 * y[:, None]).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=x, y_train=y)
    return buffer.getvalue()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the volume refuses."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError):
        with open(path, "ab") as f:
            while True:
                f.write(bytes(512))
                f.flush()


def run_disk_full(tmp_path: Path, stores: dict[str, str]) -> None:
    data = tmp_path / "data"
    with small_volume(data):
        env = base_env(
            data,
            stores
            | {
                "HETSERVE_API_KEYS": API_KEY,
                "HETSERVE_MIN_FREE_BYTES": str(MIN_FREE),
                "HETSERVE_LOG_LEVEL": "INFO",
                "HETSERVE_API_WORKERS": "1",
            },
        )
        with live_server(env) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as api:
            worker = start_worker(env, tmp_path / "worker.log")
            try:
                check_disk_full(api, data, worker)
            finally:
                stop(worker)
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "handing the message back" not in log, log[-3000:]


def upload(api: httpx.Client, content: bytes, name: str = "d.npz") -> httpx.Response:
    return api.post("/v1/datasets", files={"file": (name, content)})


def job_state(api: httpx.Client, job_id: str) -> dict:
    r = api.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def check_disk_full(api: httpx.Client, data: Path, worker: subprocess.Popen) -> None:
    ready = api.get("/readyz").json()
    assert ready["disk_space"] == "ok", ready
    small = upload(api, npz_upload(0, rows=2000, features=8))
    assert small.status_code == 201, small.text
    spec = SLOW | {"train": SLOW["train"] | {"epochs": 500}, "dataset_id": small.json()["id"]}
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code in (201, 202), job.text
    job_id = job.json()["id"]
    wait_until(
        lambda: (
            job_state(api, job_id)["status"] == "running"
            and (job_state(api, job_id).get("progress") or {}).get("epoch", 0) >= 2
        ),
        120,
        "the job's second epoch",
    )

    stored, refused = [], None
    for seed in range(1, 20):
        r = upload(api, npz_upload(seed))
        if r.status_code == 201:
            stored.append(r.json()["id"])
            continue
        refused = r
        break
    assert refused is not None, "the volume never filled"
    assert refused.status_code == 507, refused.text
    assert refused.headers["content-type"].startswith("application/json"), refused.text
    assert "no space left" in refused.json()["detail"], refused.text
    leftovers = [p.name for p in (data / "artifacts").rglob(".tmp-*")]
    assert leftovers == [], leftovers
    listed = api.get("/v1/datasets", params={"limit": 1000}).json()
    assert sorted(d["id"] for d in listed) == sorted([small.json()["id"], *stored])

    fill(data / "filler")  # whatever room is left, up to the last block
    wait_until(
        lambda: job_state(api, job_id)["status"] not in ("queued", "running"), 90, "the job to end"
    )
    ended = job_state(api, job_id)
    assert ended["status"] == "failed", ended
    assert "no space left" in ended["error"], ended["error"]
    assert not (data / "checkpoints" / job_id).exists(), "the failed job's checkpoints stayed"
    assert worker.poll() is None, "the worker died"

    low = api.get("/readyz").json()
    assert low["disk_space"].startswith("low:"), low
    start = time.monotonic()
    for dataset_id in stored:
        r = api.delete(f"/v1/datasets/{dataset_id}")
        assert r.status_code == 204, r.text
    print(f"{len(stored)} deletes on the full volume: {time.monotonic() - start:.2f} s")
    assert api.get(f"/v1/datasets/{stored[0]}").status_code == 404

    (data / "filler").unlink()
    assert api.get("/readyz").json()["disk_space"] == "ok"
    short = SLOW | {"train": SLOW["train"] | {"epochs": 2}, "dataset_id": small.json()["id"]}
    again = api.post("/v1/jobs", json=short).json()["id"]
    wait_until(
        lambda: job_state(api, again)["status"] not in ("queued", "running"),
        120,
        "a job after space returned",
    )
    assert job_state(api, again)["status"] == "succeeded", job_state(api, again)


@pytest.mark.slow
def test_disk_full_embedded(tmp_path):
    run_disk_full(tmp_path, {})


@pytest.mark.slow
def test_disk_full_postgres(tmp_path):
    with scratch_redis_postgres(f"diskfull_{uuid.uuid4().hex[:8]}") as stores:
        run_disk_full(tmp_path, stores)


def test_a_delete_on_a_full_volume_takes_the_reserve(tmp_path):
    """The embedded store needs free pages to delete a row: the reserve gives them."""
    with small_volume(tmp_path / "data") as data, client_for(make_settings(data)) as client:
        ids = []
        for seed in range(2):
            content = npz_bytes(**tiny_arrays(n=2000, d=50, seed=seed))
            r = client.post("/v1/datasets", files={"file": ("d.npz", content)}, headers=CLIENT_AUTH)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        reserve = data / disk_space.RESERVE_NAME
        assert reserve.stat().st_size == disk_space.RESERVE_BYTES
        fill(data / "filler")
        r = client.delete(f"/v1/datasets/{ids[0]}", headers=CLIENT_AUTH)
        assert r.status_code == 204, r.text
        assert reserve.exists(), "the delete freed a file: the reserve is back"

        reserve.unlink()  # no reserve and no room: the store cannot delete the row
        fill(data / "filler-2")
        r = client.delete(f"/v1/datasets/{ids[1]}", headers=CLIENT_AUTH)
        assert r.status_code == 507, r.text
        assert "no space left" in r.json()["detail"]
        assert client.get(f"/v1/datasets/{ids[1]}", headers=CLIENT_AUTH).status_code == 200
