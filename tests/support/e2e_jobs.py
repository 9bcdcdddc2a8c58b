"""Jobs through a real service's HTTP API (an ``httpx.Client`` with the API key): submit,
read and wait for a job; upload a dataset of Gaussian blobs (K classes in D dimensions)
and the job spec that learns it."""

from __future__ import annotations

import io

import numpy as np

from tests.support.waiting import wait_until

K, D = 3, 4
# The head of the small jobs that train in seconds (e2e, browser).
SMALL_HET_HEAD = {
    "kind": "het",
    "num_factors": 2,
    "temperature": 1.5,
    "train_mc_samples": 16,
    "eval_mc_samples": 64,
}
# ~0.4 s per epoch on one core: long enough to cancel or kill mid-way.
SLOW = {
    "head": {
        "kind": "het",
        "num_factors": 2,
        "temperature": 1.0,
        "train_mc_samples": 128,
        "eval_mc_samples": 64,
    },
    "backbone": {"kind": "mlp", "hidden": [256, 256]},
    "train": {"batch_size": 8, "device": "cpu"},
}
BLOBS_SPEC = {
    "head": {
        "kind": "het",
        "num_factors": 2,
        "temperature": 1.0,
        "train_mc_samples": 16,
        "eval_mc_samples": 64,
    },
    "backbone": {"kind": "mlp", "hidden": [16]},
    "train": {"epochs": 10, "batch_size": 32, "lr": 0.01, "device": "cpu"},
}


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    centers = 4.0 * np.eye(D)[:K]
    return (rng.normal(size=(n, D)) + centers[y]).astype(np.float32), y


def swap_ant_bee(
    clean: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``clean`` with ``count`` rows of class 0 or 1 (ant, bee), drawn by
    ``rng``, given the other of the two; and those rows."""
    labels = clean.copy()
    flipped = rng.choice(np.flatnonzero(clean < 2), size=count, replace=False)
    labels[flipped] = 1 - clean[flipped]
    return labels, flipped


def upload(client, **arrays) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, class_names=np.array(["ant", "bee", "cow"]))
    r = client.post("/v1/datasets", files={"file": ("labels.npz", buffer.getvalue())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(client, dataset_id: str, spec: dict, **overrides) -> dict:
    body = {"dataset_id": dataset_id, **spec, **overrides}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def job(client, job_id: str) -> dict:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_status(client, job_id: str, statuses: set[str], timeout: float) -> dict:
    def reached():
        current = job(client, job_id)
        return current if current["status"] in statuses else None

    return wait_until(reached, timeout, f"job {job_id} to reach {statuses}", interval=0.2)
