"""A real service for the client's tests: a uvicorn process and a Celery worker on the
embedded defaults (SQLite, server-less broker) on a fresh data folder, started once per
session with the same commands as the end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import API_KEY, Stack
from tests.waiting import free_port


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("client-service")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")} | {
        "HETSERVE_DATA_DIR": str(root / "data"),
        "HETSERVE_API_KEYS": API_KEY,
        "HETSERVE_CANCEL_POLL_INTERVAL_S": "0.2",
        "HETSERVE_BROKER_POLLING_INTERVAL_S": "0.1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    stack = Stack("embedded", env | {"HETSERVE_PORT": str(port)}, root / "data", port)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def service_url(service) -> str:
    return f"http://127.0.0.1:{service.port}"


def blobs_npz(path: Path, seed: int = 0) -> Path:
    """3 well-separated Gaussian classes in 4 dimensions: train/val/test 90/30/30."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(3, 4)

    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 4))).astype(np.float32), y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(90), split(30), split(30)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test, class_names=np.array(["a", "b", "c"]))  # fmt: skip
    return path


FAST_TRAIN = {
    "head": {"kind": "het", "num_factors": 2, "temperature": 1.0, "train_mc_samples": 8,
             "eval_mc_samples": 16},
    "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
}  # fmt: skip
