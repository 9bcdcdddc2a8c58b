"""Shared pieces of the in-process API tests: settings on a fresh data_dir, a TestClient,
and small dataset files built in memory."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(data_dir=data_dir, api_keys=API_KEY, **overrides)


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


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
