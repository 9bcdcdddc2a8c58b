"""Shared pieces of the in-process API tests: settings on a fresh data_dir, a TestClient,
and small dataset files built in memory."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.support.scratch_stores import scratch_redis_postgres

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(data_dir=data_dir, api_keys=API_KEY, **overrides)


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


@contextmanager
def client_on_store(
    store: str, data_dir: Path, prefix: str
) -> Iterator[tuple[TestClient, Settings]]:
    """A client and its settings on ``store``: ``sqlite`` (the default) or ``postgresql``
    (a scratch database named ``prefix_<random>``, skipped without one)."""
    if store == "sqlite":
        settings = make_settings(data_dir)
        with client_for(settings) as client:
            yield client, settings
        return
    with scratch_redis_postgres(f"{prefix}_{uuid.uuid4().hex[:8]}") as env:
        settings = make_settings(data_dir, database_url=env["HETSERVE_DATABASE_URL"])
        with client_for(settings) as client:
            yield client, settings


def uploaded(client: TestClient, filename: str, arrays: dict) -> dict:
    """The dataset created by uploading ``arrays`` as the ``.npz`` file ``filename`` (201
    asserted)."""
    r = client.post("/v1/datasets", files={"file": (filename, npz_bytes(**arrays))}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def tiny_arrays(n: int = 40, d: int = 3, k: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % k
    return {"x_train": x, "y_train": y}


def png_bytes(color: tuple[int, int, int], size: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
