"""End-to-end fixtures: a REAL uvicorn process and REAL Celery worker processes on a fresh
data_dir, on two backends:

- ``embedded``: SQLite store, kombu's SQL transport on a SQLite file, nothing to start;
- ``redis-postgres``: the Redis and PostgreSQL named by HETSERVE_TEST_REDIS_URL and
  HETSERVE_TEST_DATABASE_URL (.ci/run sets them). Unset: skipped with the reason; set
  but unreachable: the tests fail. Each session gets a fresh PostgreSQL database
  (dropped afterwards) and its own Redis key prefix (deleted afterwards).

The processes are started with the exact commands of docs/architecture.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.service_stack import API_KEY, Stack
from tests.support.waiting import free_port

HERE = Path(__file__).resolve().parent
BACKENDS = ("embedded", "redis-postgres")


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e is marked ``e2e`` (the hook sees the whole session's
    items, so only those below this folder)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def redis_postgres_env(session_id: str) -> Iterator[dict[str, str]]:
    with scratch_redis_postgres(f"e2e_{session_id}") as env:
        yield env | {
            # Short so the SIGKILL test sees Redis redeliver; the limit stays below it.
            "HETSERVE_JOB_TIME_LIMIT_S": "20",
            "HETSERVE_BROKER_VISIBILITY_TIMEOUT_S": "22",
        }


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    session_id = uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    (root / "refs").mkdir()  # datasets registered by reference live under here
    (root / "weights").mkdir()  # pretrained backbone weights (HETSERVE_WEIGHTS_DIR)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    env = base_env | {
        "HETSERVE_DATA_DIR": str(root / "data"),
        "HETSERVE_API_KEYS": API_KEY,
        "HETSERVE_CANCEL_POLL_INTERVAL_S": "0.2",
        "HETSERVE_DATASET_ROOTS": str(root / "refs"),
        "HETSERVE_WEIGHTS_DIR": str(root / "weights"),
        "HETSERVE_BROKER_POLLING_INTERVAL_S": "0.1",
        "PYTHONUNBUFFERED": "1",
        # One thread per process: on a shared 2-core box torch's spinning OpenMP threads
        # made an epoch 3-10x slower.
        "OMP_NUM_THREADS": "1",
    }
    backend_env = (
        redis_postgres_env(session_id) if request.param == "redis-postgres" else iter([{}])
    )
    extra = next(backend_env)
    port = free_port()
    stack = Stack(request.param, env | extra | {"HETSERVE_PORT": str(port)}, root / "data", port)
    try:
        with stack.running():
            yield stack
    finally:
        next(backend_env, None)  # drop the database and the Redis keys


def dataset_npz(path: Path, n: int, seed: int = 0) -> Path:
    """Two Gaussian classes in 8 dimensions, 3/4 train, 1/4 test."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = (rng.normal(size=(n, 8)) + 1.5 * y[:, None] * np.eye(8)[0]).astype(np.float32)
    cut = 3 * n // 4
    np.savez(
        path,
        x_train=x[:cut],
        y_train=y[:cut],
        x_test=x[cut:],
        y_test=y[cut:],
        class_names=np.array(["neg", "pos"]),
    )
    return path


@pytest.fixture(scope="module")
def datasets(stack, tmp_path_factory) -> dict[str, str]:
    """Two uploaded datasets: "tiny" (fast jobs) and "slow" (jobs that run long enough to
    be cancelled or killed mid-way)."""
    folder = tmp_path_factory.mktemp("datasets")
    ids = {}
    with stack.client() as client:
        for name, n in (("tiny", 240), ("slow", 2000)):
            with open(dataset_npz(folder / f"{name}.npz", n), "rb") as f:
                r = client.post("/v1/datasets", files={"file": (f"{name}.npz", f)})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
    return ids
