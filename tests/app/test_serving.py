"""Serving over real HTTP: a live uvicorn (torch blocked) on a real store with exported
models registered; predictions checked against onnxruntime runs of the downloaded file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app import uploads
from tests.support.model_serving import (
    AUTH,
    EVAL_S,
    IMAGE_SHAPE,
    NO_TORCH_UVICORN,
    D,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
    without_noise_free_output,
)

MAX_ROWS = 100
MAX_S = 2000
MAX_BYTES = 200_000
SERVER_SETTINGS = dict(
    max_batch_rows=MAX_ROWS,
    max_mc_samples=MAX_S,
    max_request_bytes=MAX_BYTES,
    max_queue_delay_ms=20,
    max_batch_size=64,
)
BASELINE_METRICS = {"test_accuracy": 0.4, "test_nll": 1.2, "test_ece": 0.2, "test_brier": 0.7}


def with_extra_metadata(path: Path, out: Path) -> Path:
    """The same model in a file of its own (other bytes, so another content address)."""
    proto = onnx.load(path)
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, "copy": "1"}
    )
    onnx.save(proto, out)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serving")
    settings = make_settings(data, **SERVER_SETTINGS)
    ids = {
        "a": register(settings, exported("het"), baseline_metrics=BASELINE_METRICS),
        "b": register(settings, exported("het")),  # shares a's file
        "own": register(settings, with_extra_metadata(exported("het"), data / "copy.onnx")),
        "image": register(settings, exported("image")),
        "old": register(settings, without_noise_free_output(exported("het"), data / "old.onnx")),
    }
    env = settings_env(data, **SERVER_SETTINGS)
    with live_server(env) as url:
        yield {"url": url, "ids": ids, "settings": settings, "env": env}


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server["url"], headers=AUTH, timeout=30) as c:
        yield c


def rows(n, seed):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def predict(client, model, x, **options):
    payload = {
        **({} if x is None else {"inputs": x.tolist() if isinstance(x, np.ndarray) else x}),
        **options,
    }
    r = client.post(f"/v1/models/{model}/predict", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def column(body, field):
    return np.array([p[field] for p in body["predictions"]], dtype=np.float64)


def metric(text: str, name: str, labels: dict) -> float:
    """One sample's value from a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


# -- correctness ----------------------------------------------------------------------


def test_one_sample_answers_mc_stderr_null(server, client):
    """mc_samples = 1: the graph's mc_stderr is NaN (undefined from one draw); the API
    answers null for it, 200 and not the non-finite-output 422, the rest as usual."""
    body = predict(client, server["ids"]["a"], rows(3, 3), mc_samples=1, seed=2)
    assert body["mc_samples"] == 1
    for row in body["predictions"]:
        assert row["mc_stderr"] is None and len(row["prob_std"]) == len(row["probs"])


def test_api_equals_onnxruntime_on_the_downloaded_file(server, client):
    model_id = server["ids"]["a"]
    r = client.get(f"/v1/models/{model_id}/onnx")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-onnx-sha256"]
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    x, s, seed = rows(4, 3), 500, 1234
    names = [o.name for o in session.get_outputs()]
    feeds = {"input": x, "num_samples": np.asarray(s, np.int64), "seed": np.asarray(seed, np.int64)}
    direct = dict(zip(names, session.run(names, feeds), strict=True))

    body = predict(client, model_id, x, mc_samples=s, seed=seed, correlated_pairs=True, top_k=2)
    assert body["model_id"] == model_id and body["mc_samples"] == s
    # Equal up to float32 rounding: how a batch is cut into onnxruntime calls may move
    # the last bits; other noise moves them ~1e-2.
    fields = ("probs", "entropy", "expected_entropy", "prob_std", "noise_std", "mc_stderr")
    for field in fields:  # mc_stderr: the graph's (from the QMC groups' spread)
        want = direct[field].astype(np.float64)
        np.testing.assert_allclose(column(body, field), want, rtol=1e-5, atol=1e-6, err_msg=field)
    for b, p in enumerate(body["predictions"]):
        probs = np.array(p["probs"])
        label = int(probs.argmax())
        assert p["label"] == label and p["class_name"] == f"c{label}"
        assert p["confidence"] == p["probs"][label]
        assert [t["class"] for t in p["top_k"]] == list(np.argsort(-probs)[:2])
        # correlations are exact functions of the input (no sampling): the file's own rho
        classes, rho = list(direct["top_classes"][b]), direct["top_correlation"][b]
        pairs = p["correlated_pairs"]
        assert 1 <= len(pairs) <= 5
        strongest = np.abs(rho[np.triu_indices(len(classes), 1)]).max()
        assert abs(pairs[0]["correlation"]) == pytest.approx(float(strongest), rel=1e-5)
        i, j = (classes.index(c) for c in pairs[0]["classes"])
        assert pairs[0]["correlation"] == pytest.approx(float(rho[i, j]), rel=1e-5)


def test_noise_free_predictive_is_the_files_noise_free_output_without_sampling(server, client):
    model_id = server["ids"]["a"]
    session = ort.InferenceSession(str(exported("het")), providers=["CPUExecutionProvider"])
    x = rows(4, 8)
    feeds = {"input": x, "num_samples": np.asarray(0, np.int64), "seed": np.asarray(1, np.int64)}
    want, noise_std = session.run(["noise_free_probs", "noise_std"], feeds)

    body = predict(client, model_id, x, predictive="noise_free", top_k=2, correlated_pairs=True)
    assert body["predictive"] == "noise_free" and body["mc_samples"] == 0
    np.testing.assert_allclose(column(body, "probs"), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(column(body, "noise_std"), noise_std, rtol=1e-5, atol=1e-6)
    for p in body["predictions"]:
        probs = np.array(p["probs"])
        assert p["label"] == int(probs.argmax()) and p["confidence"] == p["probs"][p["label"]]
        assert p["entropy"] == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-4)
        assert p["expected_entropy"] is None and p["prob_std"] is None and p["mc_stderr"] is None
        assert p["noise_free_probs"] == p["probs"] and p["correlated_pairs"]
        assert [t["class"] for t in p["top_k"]] == list(np.argsort(-probs)[:2])
    # mc_samples is ignored (no sampling); seeded requests stay bit-identical
    seeded = predict(client, model_id, x, predictive="noise_free", seed=3, mc_samples=50)
    assert seeded["mc_samples"] == 0
    again = predict(client, model_id, x[1:2], predictive="noise_free", seed=3)
    assert again["predictions"][0] == seeded["predictions"][1]

    marginal = predict(client, model_id, x, seed=3)
    assert marginal["predictive"] == "marginal" and marginal["mc_samples"] == EVAL_S
    np.testing.assert_allclose(column(marginal, "noise_free_probs"), want, rtol=1e-5, atol=1e-6)
    assert all(p["prob_std"] is not None for p in marginal["predictions"])


def test_a_model_file_without_the_noise_free_output_is_409_for_noise_free_only(server, client):
    old = server["ids"]["old"]
    r = client.post(
        f"/v1/models/{old}/predict",
        json={"inputs": rows(1, 0).tolist(), "predictive": "noise_free"},
    )
    assert r.status_code == 409 and "noise_free_probs" in r.json()["detail"], r.text
    body = predict(client, old, rows(1, 0))
    assert body["predictive"] == "marginal" and "noise_free_probs" not in body["predictions"][0]


def test_unseeded_calls_differ_and_agree_within_mc_error(server, client):
    model_id, x = server["ids"]["a"], rows(3, 4)
    first, second = predict(client, model_id, x), predict(client, model_id, x)
    assert first["mc_samples"] == EVAL_S
    p1, p2 = column(first, "probs"), column(second, "probs")
    assert not np.array_equal(p1, p2)
    se = np.sqrt(column(first, "mc_stderr") ** 2 + column(second, "mc_stderr") ** 2)
    z = np.abs(p1 - p2) / se
    assert z.max() < 5, z  # 15 comparisons of two independent MC estimates


def test_seed_reproducible_and_alias_follows(server, client):
    model_id, x = server["ids"]["a"], rows(2, 5)
    assert client.put("/v1/aliases/stable", json={"model_id": model_id}).status_code == 200
    one = predict(client, model_id, x, seed=9)
    two = predict(client, "stable", x, seed=9)
    assert two["model_id"] == model_id
    assert one["predictions"] == two["predictions"]


def test_two_api_processes_fresh_unseeded_identical_seeded(server, client):
    """Two uvicorn processes on one store: each draws its own stream (os.urandom per
    call), and a seed gives the same numbers in both."""
    model_id, x = server["ids"]["a"], rows(2, 6)
    with (
        live_server(server["env"]) as other_url,
        httpx.Client(base_url=other_url, headers=AUTH) as other,
    ):
        seeded = [predict(c, model_id, x, seed=77) for c in (client, other)]
        fresh = [predict(c, model_id, x) for c in (client, other)]
    assert seeded[0]["predictions"] == seeded[1]["predictions"]
    assert not np.array_equal(column(fresh[0], "probs"), column(fresh[1], "probs"))


def test_64_concurrent_requests_of_different_sizes_batch_and_answer_right(server, client):
    from app.serving.onnx_model import OnnxModel

    model_id = server["ids"]["own"]
    reference = OnnxModel(exported("het"))
    sizes = [1 + (i * 7) % 8 for i in range(64)]  # 1..8 rows
    requests = [(rows(n, 1000 + i), 21 if i % 2 else None) for i, n in enumerate(sizes)]
    labels = {"model": model_id}
    before = client.get("/metrics").text

    async def fire():
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=60) as ac:
            calls = []
            for x, seed in requests:
                payload = {"inputs": x.tolist(), **({"seed": seed} if seed is not None else {})}
                calls.append(ac.post(f"/v1/models/{model_id}/predict", json=payload))
            return await asyncio.gather(*calls)

    answers = asyncio.run(fire())
    after = client.get("/metrics").text
    for (x, seed), r in zip(requests, answers, strict=True):
        assert r.status_code == 200, r.text
        probs = column(r.json(), "probs")
        assert probs.shape == (len(x), 5)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
        if seed is not None:
            want = reference.run(x, num_samples=EVAL_S, seed=seed)["probs"]
            np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-7)
    merged = metric(after, "hetserve_batch_requests_sum", labels) - metric(
        before, "hetserve_batch_requests_sum", labels
    )
    calls = metric(after, "hetserve_batch_requests_count", labels) - metric(
        before, "hetserve_batch_requests_count", labels
    )
    assert merged == 64
    assert calls <= 32, (
        f"{calls} onnxruntime calls for 64 concurrent requests: batches did not form"
    )


def test_moving_an_alias_under_load_drops_no_request(server, client):
    a, b = server["ids"]["a"], server["ids"]["b"]
    assert client.put("/v1/aliases/live", json={"model_id": a}).status_code == 200
    x = rows(2, 8).tolist()

    async def load():
        statuses, served = [], set()
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=60) as ac:

            async def user():
                while not stop.is_set():
                    r = await ac.post(
                        "/v1/models/live/predict", json={"inputs": x, "mc_samples": 50}
                    )
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        served.add(r.json()["model_id"])

            async def mover():
                for k in range(16):
                    r = await ac.put("/v1/aliases/live", json={"model_id": b if k % 2 == 0 else a})
                    assert r.status_code == 200
                    await asyncio.sleep(0.05)
                stop.set()

            await asyncio.gather(mover(), *(user() for _ in range(8)))
        return statuses, served

    statuses, served = asyncio.run(load())
    assert len(statuses) > 16
    assert set(statuses) == {200}
    assert served == {a, b}


def test_serving_path_imports_no_torch(server, client):
    """Every server here runs with torch made unimportable (model_serving.NO_TORCH_UVICORN):
    check that the guard really blocks it, then serve vectors and images through it."""
    guard = NO_TORCH_UVICORN.split("import uvicorn")[0] + "import torch\n"
    blocked = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch is not allowed" in blocked.stderr
    predict(client, server["ids"]["a"], rows(2, 0), correlated_pairs=True)
    png = base64.b64encode(encode(Image.new("L", (8, 8), 128), "PNG")).decode()
    predict(client, server["ids"]["image"], None, images=[png])


# -- images ---------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_images_are_preprocessed_as_at_training_time(server, client):
    """A JPEG (RGB, 13 x 11) through /predict gives what the training upload of the same
    file would have fed the model (app/uploads.py's zip path), seed for seed."""
    model_id = server["ids"]["image"]
    size = IMAGE_SHAPE[1]
    pixels = np.random.default_rng(0).integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    jpeg = encode(Image.fromarray(pixels, "RGB"), "JPEG")
    png = encode(Image.fromarray(pixels[:size, :size, 0], "L"), "PNG")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("train/c0/a.jpg", jpeg)
        z.writestr("train/c0/b.png", png)
    trained_on, _ = uploads.read_image_zip(archive.getvalue(), size, grayscale=True)
    images = [base64.b64encode(jpeg).decode(), base64.b64encode(png).decode()]
    via_images = predict(client, model_id, None, images=images, seed=3)
    via_inputs = predict(client, model_id, trained_on["x_train"], seed=3)
    assert via_images["predictions"] == via_inputs["predictions"]
    # the exact-size grayscale PNG needs no resize: its pixels / 255 are the input
    np.testing.assert_array_equal(
        trained_on["x_train"][1, 0], pixels[:size, :size, 0] / np.float32(255)
    )


# -- validation -----------------------------------------------------------------------


def test_validation_names_the_field_and_index(server, client):
    vec, img = server["ids"]["a"], server["ids"]["image"]
    good = rows(2, 0).tolist()
    cases = [
        (vec, {"inputs": [1, 2, 3, 4, 5, 6]}, ["body", "inputs", 0]),  # rank too low
        (vec, {"inputs": [good[0], good[1][:5]]}, ["body", "inputs", 1]),  # wrong length
        (vec, {"inputs": [good[0], [[1.0]] * 6]}, ["body", "inputs", 1, 0]),  # rank too high
        (vec, {"inputs": [good[0], [*good[1][:3], "7", *good[1][4:]]]}, ["body", "inputs", 1, 3]),
        (vec, {"inputs": [[None, *good[0][1:]]]}, ["body", "inputs", 0, 0]),
        (vec, {"inputs": [[True, *good[0][1:]]]}, ["body", "inputs", 0, 0]),
        (vec, {"inputs": [good[0], [*good[1][:5], 1e39]]}, ["body", "inputs", 1, 5]),  # > float32
        (vec, {"inputs": [good[0]] * (MAX_ROWS + 1)}, ["body", "inputs"]),
        (vec, {"inputs": [good[0], [3e38] * D]}, ["body", "inputs", 1]),  # outputs overflow
        (vec, {"inputs": []}, ["body", "inputs"]),
        (vec, {"inputs": good, "mc_samples": 0}, ["body", "mc_samples"]),
        (vec, {"inputs": good, "mc_samples": MAX_S + 1}, ["body", "mc_samples"]),
        (vec, {"inputs": good, "seed": -1}, ["body", "seed"]),
        (vec, {"inputs": good, "top_k": 0}, ["body", "top_k"]),
        (vec, {"inputs": good, "predictive": "epistemic"}, ["body", "predictive"]),
        (vec, {"inputs": good, "predictive": None}, ["body", "predictive"]),
        (vec, {}, ["body"]),
        (vec, {"images": ["aGVsbG8="]}, ["body", "images"]),  # not an image model
        (img, {"images": ["aGVsbG8="]}, ["body", "images", 0]),  # base64 of "hello"
        (
            img,
            {"images": [base64.b64encode(encode(Image.new("L", (8, 8)), "PNG")).decode(), "%%%"]},
            ["body", "images", 1],
        ),
    ]
    for model, body, loc in cases:
        r = client.post(f"/v1/models/{model}/predict", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert any(d["loc"] == loc for d in detail), (loc, detail)

    nan = json.dumps({"inputs": good}).replace(str(good[1][2]), "NaN", 1)
    r = client.post(
        f"/v1/models/{vec}/predict", content=nan, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "inputs", 1, 2], r.text

    for raw in (b"\xd3\x1a\xff3\x18", b"[1, 2", b""):  # not UTF-8, truncated, empty
        r = client.post(
            f"/v1/models/{vec}/predict", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", r.text


def test_oversized_bodies_get_413_declared_or_streamed(server, client):
    url = f"/v1/models/{server['ids']['a']}/predict"
    big = json.dumps({"inputs": [[0.123456789] * D] * 5000}).encode()
    assert len(big) > MAX_BYTES
    assert (
        client.post(url, content=big, headers={"content-type": "application/json"}).status_code
        == 413
    )

    def chunks():  # no Content-Length: chunked transfer, cut off while streaming
        for start in range(0, len(big), 16384):
            yield big[start : start + 16384]

    r = client.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_auth_and_unknown_models(server, client):
    url = server["url"]
    assert (
        httpx.post(
            f"{url}/v1/models/{server['ids']['a']}/predict", json={"inputs": [[0] * D]}
        ).status_code
        == 401
    )
    assert (
        httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert (
        client.post("/v1/models/nosuchmodel/predict", json={"inputs": [[0] * D]}).status_code == 404
    )
    assert client.get("/v1/models/nosuchmodel").status_code == 404
    assert httpx.get(f"{url}/metrics").status_code == 200  # no key needed


# -- registry -------------------------------------------------------------------------


def test_registry_aliases_and_delete(server, client):
    ids, settings = server["ids"], server["settings"]
    listed = {m["id"]: m for m in client.get("/v1/models").json()}
    assert set(ids.values()) <= set(listed)
    a = client.get(f"/v1/models/{ids['a']}").json()
    assert a["baseline_metrics"] == BASELINE_METRICS
    assert a["input_shape"] == [D] and a["class_names"] == [f"c{i}" for i in range(5)]
    assert a["metrics"]["test_nll"] == 1.0 and a["head"] == "het" and a["task"] == "multiclass"
    assert client.get(f"/v1/models/{ids['image']}").json()["input_shape"] == IMAGE_SHAPE

    assert client.put("/v1/aliases/keep-b", json={"model_id": ids["b"]}).status_code == 200
    assert client.get("/v1/models/keep-b").json()["id"] == ids["b"]
    assert client.put("/v1/aliases/bad name", json={"model_id": ids["b"]}).status_code == 422
    assert client.put("/v1/aliases/x", json={"model_id": "nosuchmodel"}).status_code == 422
    assert "keep-b" in {al["name"] for al in client.get("/v1/aliases").json()}
    assert client.delete(f"/v1/models/{ids['b']}").status_code == 409  # an alias points at it
    assert client.delete("/v1/aliases/keep-b").status_code == 204
    assert client.delete("/v1/aliases/keep-b").status_code == 404

    from app.artifacts import ArtifactStore
    from app.db import session_scope
    from app.store import Model

    with session_scope(settings) as session:
        shared_path = ArtifactStore(settings.data_dir).resolve(
            session.get(Model, ids["b"]).onnx_path
        )
    assert client.delete(f"/v1/models/{ids['b']}").status_code == 204
    assert client.get(f"/v1/models/{ids['b']}").status_code == 404
    assert (
        client.post(f"/v1/models/{ids['b']}/predict", json={"inputs": [[0] * D]}).status_code == 404
    )
    assert shared_path.exists()  # model a still uses the file
    predict(client, ids["a"], rows(1, 0))

    with session_scope(settings) as session:
        own_path = ArtifactStore(settings.data_dir).resolve(
            session.get(Model, ids["own"]).onnx_path
        )
    assert client.delete(f"/v1/models/{ids['own']}").status_code == 204
    assert not own_path.exists()  # no other model used it


def test_metrics_cover_routes_sessions_and_jobs(server, client):
    predict(client, server["ids"]["a"], rows(1, 1))
    text = client.get("/metrics").text
    labels = {
        "route": "/v1/models/{model_id}/predict",
        "method": "POST",
        "model": server["ids"]["a"],
        "status": "200",
    }
    assert metric(text, "hetserve_http_requests_total", labels) >= 1
    assert metric(text, "hetserve_jobs", {"status": "succeeded"}) == 5
    # a, image and old (b and own deleted)
    assert metric(text, "hetserve_sessions_loaded", {}) == 3
    assert "hetserve_queue_depth" in text and "hetserve_inference_duration_seconds_bucket" in text


def test_metrics_sum_over_uvicorn_workers(server, tmp_path):
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: /metrics counts every process's
    requests, whichever process answers the scrape."""
    env = {**server["env"], "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    model_id, n = server["ids"]["a"], 12
    with live_server(env, workers=2) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        for i in range(n):
            predict(c, model_id, rows(1, i))
        text = c.get("/metrics").text
    labels = {
        "route": "/v1/models/{model_id}/predict",
        "method": "POST",
        "model": model_id,
        "status": "200",
    }
    assert metric(text, "hetserve_http_requests_total", labels) == n
    assert metric(text, "hetserve_batch_rows_count", {"model": model_id}) == n
