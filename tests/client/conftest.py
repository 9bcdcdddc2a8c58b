"""A real service for the client's tests: a uvicorn process and a Celery worker on the
embedded defaults (SQLite, server-less broker) on a fresh data folder, started once per
session with the same commands as the end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.service_stack import API_KEY, Stack
from tests.support.waiting import free_port


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
    with stack.running():
        yield stack


@pytest.fixture(scope="session")
def service_url(service) -> str:
    return f"http://127.0.0.1:{service.port}"
