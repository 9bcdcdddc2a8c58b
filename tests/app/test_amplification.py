"""Small requests that would expand into large work, against a real uvicorn: each is refused
by what its route needs, from a header or a declared size, before the work is done."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from app.uploads import decode_slot
from core.dataset_files import MAX_IMAGE_PIXELS
from tests.support.model_serving import (
    API_KEY,
    AUTH,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
)
from tests.support.service_client import client_for

pytestmark = pytest.mark.slow  # the module's two exported models: ~40 s (more on a busy machine)

PREDICT_KEY = "predict-only-key"
MAX_UPLOAD = 16 * 1024 * 1024
MAX_ROWS = 300_000
ROWS_30_MB = 220_000  # of 6 float64 values in JSON: ~28 MB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("amplification")
    roots = tmp_path_factory.mktemp("roots")
    settings = make_settings(data)
    vector, image = register(settings, exported("het")), register(settings, exported("image"))
    env = settings_env(
        data,
        api_keys=f"{API_KEY},{PREDICT_KEY}:predict",
        max_upload_bytes=MAX_UPLOAD,
        max_batch_rows=MAX_ROWS,
        dataset_roots=str(roots),
    )
    with live_server(env) as url:
        yield {"url": url, "data": data, "roots": roots, "vector": vector, "image": image}


def test_json_dataset_registration_gets_the_json_cap_not_the_upload_cap(server):
    pad = b'{"uri": "file:///x", "pad": "' + b"a" * (8 * 1024 * 1024) + b'"}'
    start = time.monotonic()
    r = httpx.post(
        f"{server['url']}/v1/datasets",
        content=pad,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert str(4 * 1024 * 1024) in r.json()["detail"], r.text
    assert time.monotonic() - start < 5


def test_a_30_mb_predict_body_does_not_stall_the_event_loop(server):
    rows = np.random.default_rng(0).normal(size=(ROWS_30_MB, 6)).tolist()
    rows[-1][0] = "not a number"  # parsed and checked in full, then refused: no inference
    body = json.dumps({"inputs": rows}).encode()
    assert 25_000_000 < len(body) < 32 * 1024 * 1024
    latencies: list[float] = []
    done = threading.Event()

    def probe():
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                start = time.monotonic()
                client.get(f"{server['url']}/healthz").raise_for_status()
                latencies.append(time.monotonic() - start)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(0.3)
        r = httpx.post(
            f"{server['url']}/v1/models/{server['vector']}/predict",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=120,
        )
        time.sleep(0.3)
    finally:
        done.set()
        prober.join()
    assert r.status_code == 422 and str(ROWS_30_MB - 1) in r.text, r.text[:500]
    print(f"/healthz during a {len(body)} byte predict: max {max(latencies):.3f} s")
    assert max(latencies) < 1.0, sorted(latencies)[-5:]


def npz_declaring_zeros(rows: int, columns: int) -> bytes:
    """A compressed .npz of float32 zeros (rows x columns) and 0/1 labels, written a
    chunk at a time (the test never holds the array)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (rows, columns)}
            )
            chunk = bytes(4 * columns * 1000)
            for start in range(0, rows, 1000):
                member.write(chunk[: 4 * columns * (min(rows, start + 1000) - start)])
        labels = io.BytesIO()
        np.save(labels, np.arange(rows) % 2)
        archive.writestr("y_train.npy", labels.getvalue())
    return buffer.getvalue()


def stored_files(data) -> list[str]:
    root = data / "artifacts"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_an_npz_may_not_expand_past_its_on_disk_cap(server):
    before = stored_files(server["data"])
    upload = npz_declaring_zeros(225_000, 1000)  # ~0.9 MB declaring 900 MB (the issue's)
    start = time.monotonic()
    r = httpx.post(
        f"{server['url']}/v1/datasets",
        files={"file": ("zeros.npz", upload)},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 413, r.text
    assert str(MAX_UPLOAD) in r.json()["detail"] and "HETSERVE_MAX_UPLOAD_BYTES" in r.text
    assert time.monotonic() - start < 3, "refused from the npy headers, not after inflating"
    assert stored_files(server["data"]) == before


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_image_bomb_is_refused_from_its_header_for_a_predict_only_key(server):
    bomb = png(7000, 7000)  # 49 megapixels in ~50 KB
    start = time.monotonic()
    r = httpx.post(
        f"{server['url']}/v1/models/{server['image']}/predict",
        json={"images": [png(8, 8), bomb]},
        headers={"Authorization": f"Bearer {PREDICT_KEY}"},
        timeout=60,
    )
    assert r.status_code == 422, r.text
    assert "images[1]" in r.text and str(MAX_IMAGE_PIXELS) in r.text, r.text
    assert time.monotonic() - start < 2


def test_a_request_s_images_share_one_pixel_budget(server):
    big = png(5000, 5000)  # 25 megapixels each: one passes, two exceed the budget
    r = httpx.post(
        f"{server['url']}/v1/models/{server['image']}/predict",
        json={"images": [big]},
        headers={"Authorization": f"Bearer {PREDICT_KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server['url']}/v1/models/{server['image']}/predict",
        json={"images": [big, big]},
        headers={"Authorization": f"Bearer {PREDICT_KEY}"},
        timeout=60,
    )
    assert r.status_code == 422 and "images[1]" in r.text and "add up to" in r.text, r.text


def test_an_image_bomb_in_an_upload_zip_is_refused(server):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/a/bomb.png", base64.b64decode(png(7000, 7000)))
        archive.writestr("train/b/ok.png", base64.b64decode(png(8, 8)))
    r = httpx.post(
        f"{server['url']}/v1/datasets",
        files={"file": ("bomb.zip", buffer.getvalue())},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 413 and "bomb.png" in r.text and "pixels" in r.text, r.text


def register_reference(server, path) -> httpx.Response:
    return httpx.post(
        f"{server['url']}/v1/datasets", json={"uri": f"file://{path}"}, headers=AUTH, timeout=60
    )


def test_a_sparse_2_gb_npz_under_a_root_is_refused_from_its_size(server):
    big = server["roots"] / "sparse.npz"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)
    start = time.monotonic()
    r = register_reference(server, big)
    assert r.status_code in (413, 422), r.text
    assert "pickle" not in r.text and "HETSERVE_MAX_EXPANDED_BYTES" in r.text, r.text
    assert time.monotonic() - start < 2


def test_a_file_that_is_not_a_zip_is_not_called_pickled(server):
    junk = server["roots"] / "junk.npz"
    junk.write_bytes(os.urandom(1000))
    r = register_reference(server, junk)
    assert r.status_code == 422 and "not a zip archive" in r.text and "pickle" not in r.text


def test_an_npz_with_a_negative_shape_is_named(server):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (-5, 10)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue())
        archive.writestr("y_train.npy", header.getvalue())
    path = server["roots"] / "negative.npz"
    path.write_bytes(buffer.getvalue())
    r = register_reference(server, path)
    assert r.status_code == 422 and "negative dimension" in r.text and "pickle" not in r.text
    r = httpx.post(
        f"{server['url']}/v1/datasets",
        files={"file": ("negative.npz", buffer.getvalue())},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 422 and "negative dimension" in r.text, r.text


def test_predict_images_wait_for_the_decode_slots_uploads_take(tmp_path):
    settings = make_settings(tmp_path / "data", max_concurrent_decodes=1, decode_wait_s=0.2)
    model = register(settings, exported("image"))
    with client_for(settings) as client, decode_slot(1, 1.0):  # an upload decoding
        r = client.post(f"/v1/models/{model}/predict", json={"images": [png(8, 8)]}, headers=AUTH)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
