"""Uploads that would expand past memory, labels past int64, and the decode slots.

A .npz is refused by the sizes its npy headers declare, before numpy allocates them.
"""

from __future__ import annotations

import io
import threading
import zipfile

import numpy as np
import pytest

from app.uploads import decode_slot
from tests.support.service_client import AUTH, client_for, files_under, make_settings, npz_bytes


def upload(client, name: str, data: bytes):
    return client.post("/v1/datasets", files={"file": (name, data)}, headers=AUTH)


@pytest.fixture
def small_limit(tmp_path):
    settings = make_settings(
        tmp_path / "data", max_expanded_bytes=1 << 20, max_concurrent_decodes=1, decode_wait_s=0.2
    )
    with client_for(settings) as client:
        yield client, settings


def compressed_npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_compressed_npz_past_the_expanded_limit_is_413(small_limit):
    client, settings = small_limit
    # 6.4 MB of zeros compresses to a few KB: the limit is 1 MiB.
    data = compressed_npz(
        x_train=np.zeros((200_000, 8), np.float32), y_train=np.arange(200_000) % 2
    )
    assert len(data) < 64 * 1024
    r = upload(client, "bomb.npz", data)
    assert r.status_code == 413, r.text
    assert "HETSERVE_MAX_EXPANDED_BYTES" in r.json()["detail"]
    assert files_under(settings.data_dir / "artifacts") == []


def test_npz_header_declaring_gigabytes_is_refused_before_reading(small_limit):
    client, _ = small_limit
    # A member whose npy header declares 10**9 float32 (4 GB) but holds no data: the
    # zip's own sizes are tiny, only the header tells.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 1)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x_train.npy", header.getvalue())
        z.writestr("y_train.npy", header.getvalue())
    r = upload(client, "liar.npz", buffer.getvalue())
    assert r.status_code == 413, r.text
    assert "declared shapes" in r.json()["detail"]


def test_npz_under_the_limit_is_accepted(small_limit):
    client, _ = small_limit
    x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    r = upload(client, "ok.npz", npz_bytes(x_train=x, y_train=np.arange(1000) % 2))
    assert r.status_code == 201, r.text


def test_csv_label_past_int64_is_422(tmp_path):
    with client_for(make_settings(tmp_path / "data")) as client:
        csv = f"label,a\n0,1.0\n{2**70},2.0\n1,3.0\n".encode()
        r = upload(client, "big.csv", csv)
        assert r.status_code == 422, r.text
        assert "int64" in r.json()["detail"]


def test_uploads_wait_for_a_decode_slot_then_503(small_limit):
    client, settings = small_limit
    taken, release = threading.Event(), threading.Event()

    def hold():
        with decode_slot(settings.max_concurrent_decodes, 5):
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(5)
        x = np.zeros((10, 2), np.float32)
        r = upload(client, "ok.npz", npz_bytes(x_train=x, y_train=np.arange(10) % 2))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5"
    finally:
        release.set()
        holder.join()
    r = upload(client, "ok.npz", npz_bytes(x_train=x, y_train=np.arange(10) % 2))
    assert r.status_code == 201, r.text


def test_model_too_large_to_train_is_422(tmp_path):
    from tests.support.service_client import tiny_arrays

    with client_for(make_settings(tmp_path / "data")) as client:
        r = upload(client, "t.npz", npz_bytes(**tiny_arrays(n=40, d=8)))
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        huge = {"dataset_id": dataset_id, "backbone": {"kind": "mlp", "hidden": [16384] * 16}}
        r = client.post("/v1/jobs", json=huge, headers=AUTH)
        assert r.status_code == 422, r.text
        assert "GiB to train" in r.json()["detail"]
        fine = {"dataset_id": dataset_id, "backbone": {"kind": "mlp", "hidden": [16384, 16384]}}
        assert client.post("/v1/jobs", json=fine, headers=AUTH).status_code in (202, 503)
