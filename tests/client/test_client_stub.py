"""The client against a stub service (httpx.MockTransport): the request each method
sends, how answers and errors come back, the events/polling fallback of ``wait``, and
the two model routes (noise, label issues) coded against the contract."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest

import hetserve
from hetserve import Client

KEY = "-starts-with-a-dash"


def stub(handler) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return Client("http://svc", key=KEY, transport=httpx.MockTransport(record)), seen


NOISE = {
    "model_id": "m1",
    "num_examples": 1400,
    "class_pairs": [
        {"classes": [1, 7], "class_names": ["1", "7"], "flip_rate": 0.21, "correlation": -0.4},
        {"classes": [3, 8], "class_names": ["3", "8"], "flip_rate": 0.12, "correlation": -0.2},
    ],
    "flip_matrix": None,
    "noise_std_by_class": [0.5] * 10,
}
ISSUES = {
    "model_id": "m1",
    "dataset_id": "d1",
    "num_examples": 1400,
    "num_flagged": 57,
    "issues": [
        {"index": 12, "given_label": 7, "suggested_label": 1, "score": 0.93},
        {"index": 4, "given_label": 8, "suggested_label": 3, "score": 0.81},
    ],
}


def test_noise_and_label_issues_follow_the_contract():
    def handler(request):
        if request.url.path == "/v1/models/production/noise":
            return httpx.Response(200, json=NOISE)
        if request.url.path == "/v1/models/production/label-issues":
            return httpx.Response(200, json=ISSUES)
        return httpx.Response(404, json={"detail": "no route"})

    client, seen = stub(handler)
    report = client.noise("production")
    assert report["class_pairs"][0]["classes"] == [1, 7] and report["flip_matrix"] is None
    issues = client.label_issues("production", limit=2)
    assert [i["index"] for i in issues["issues"]] == [12, 4] and issues["num_flagged"] == 57
    assert seen[1].url.params["limit"] == "2"
    client.label_issues("production")
    assert "limit" not in seen[2].url.params
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in seen)


@pytest.mark.parametrize(
    "status, cls",
    [
        (401, hetserve.AuthenticationError),
        (403, hetserve.PermissionDenied),
        (404, hetserve.NotFoundError),
        (409, hetserve.ConflictError),
        (413, hetserve.PayloadTooLarge),
        (422, hetserve.UnprocessableError),
        (503, hetserve.ServiceUnavailable),
        (418, hetserve.ApiError),
    ],
)
def test_error_statuses_raise_api_errors_with_the_detail(status, cls):
    client, _ = stub(lambda r: httpx.Response(status, json={"detail": "nope"}))
    with pytest.raises(cls) as caught:
        client.get_model("m1")
    assert isinstance(caught.value, hetserve.ApiError)
    assert (caught.value.status_code, caught.value.detail) == (status, "nope")
    assert str(caught.value) == f"GET /v1/models/m1: HTTP {status}: nope"


def test_a_validation_detail_stays_a_list_and_reads_well():
    detail = [{"loc": ["body", "inputs", 3], "msg": "expected 64 numbers", "type": "value_error"}]
    client, _ = stub(lambda r: httpx.Response(422, json={"detail": detail}))
    with pytest.raises(hetserve.UnprocessableError) as caught:
        client.predict("m1", [[1.0]])
    assert caught.value.detail == detail
    assert "body.inputs.3: expected 64 numbers" in str(caught.value)


def test_an_unreachable_service_is_connection_failed():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    client, _ = stub(refuse)
    with pytest.raises(hetserve.ConnectionFailed, match="cannot reach http://svc"):
        client.list_jobs()


def test_predict_sends_numpy_inputs_and_options_and_returns_arrays():
    rows = [
        {"probs": [0.9, 0.1], "label": 0, "class_name": "a", "confidence": 0.9, "entropy": 0.3,
         "expected_entropy": None, "prob_std": None, "mc_stderr": None, "noise_std": [0.1, 0.2]},
        {"probs": [0.2, 0.8], "label": 1, "class_name": "b", "confidence": 0.8, "entropy": 0.5,
         "expected_entropy": None, "prob_std": None, "mc_stderr": None, "noise_std": [0.3, 0.1]},
    ]  # fmt: skip
    answer = {"model_id": "m1", "mc_samples": 0, "predictive": "noise_free", "predictions": rows}
    client, seen = stub(lambda r: httpx.Response(200, json=answer))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = client.predict("prod", x, seed=np.int64(3).item(), predictive="noise_free", top_k=2)
    body = json.loads(seen[0].content)
    assert body == {"inputs": x.tolist(), "seed": 3, "predictive": "noise_free", "top_k": 2}
    assert seen[0].url.path == "/v1/models/prod/predict"
    assert result.probs.shape == (2, 2) and result.labels.tolist() == [0, 1]
    assert result.labels.dtype == np.int64 and result.class_names == ["a", "b"]
    assert np.isnan(result.prob_std).all() and result.noise_std.shape == (2, 2)
    assert (result.predictive, result.mc_samples, len(result)) == ("noise_free", 0, 2)
    assert result[1]["class_name"] == "b"


def test_predict_sends_images_as_base64(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG fake")
    answer = {"model_id": "m1", "mc_samples": 10, "predictions": []}
    client, seen = stub(lambda r: httpx.Response(200, json=answer))
    client.predict("m1", images=[image, b"raw"])
    assert json.loads(seen[0].content) == {"images": ["iVBORyBmYWtl", "cmF3"]}
    with pytest.raises(ValueError, match="exactly one"):
        client.predict("m1")


def test_register_by_uri_and_upload_arrays(tmp_path):
    def handler(request):
        if request.headers["content-type"].startswith("application/json"):
            return httpx.Response(201, json={"id": "d1", **json.loads(request.content)})
        return httpx.Response(201, json={"id": "d2", "size": len(request.content)})

    client, seen = stub(handler)
    assert client.register_dataset("file:///data/digits.npz")["uri"] == "file:///data/digits.npz"
    client.upload_arrays(np.zeros((4, 2)), [0, 1, 0, 1], class_names=["a", "b"], name="z")
    assert b'filename="z.npz"' in seen[1].content and b"x_train.npy" in seen[1].content


def test_wait_falls_back_to_polling_when_the_stream_is_unavailable():
    states = iter(["queued", "running", "running", "succeeded"])
    progress = []

    def handler(request):
        if request.url.path.endswith("/events"):
            return httpx.Response(502, text="bad gateway")
        status = next(states)
        return httpx.Response(200, json={"id": "j1", "status": status, "progress": {}})

    client, _ = stub(handler)
    job = client.wait("j1", on_progress=lambda j: progress.append(j["status"]), poll_interval=0)
    assert job["status"] == "succeeded"
    assert progress == ["queued", "running", "succeeded"]  # a repeated state is not re-reported


def test_wait_follows_the_events_then_reads_the_whole_job():
    events = (
        'event: progress\ndata: {"id": "j1", "status": "running", "progress": {"epoch": 1}}\n\n'
        ": keep-alive\n\n"
        'event: end\ndata: {"id": "j1", "status": "succeeded", "progress": {"epoch": 2}}\n\n'
    )

    def handler(request):
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "j1", "status": "succeeded", "history": [{}]})

    client, seen = stub(handler)
    got = []
    job = client.wait("j1", on_progress=got.append)
    assert [j["progress"]["epoch"] for j in got[:2]] == [1, 2]
    assert job["history"] == [{}] and len(seen) == 2
    assert [e.event for e in client.job_events("j1")] == ["progress", "end"]


def test_wait_raises_for_an_unknown_job():
    client, _ = stub(lambda r: httpx.Response(404, json={"detail": "job j9 not found"}))
    with pytest.raises(hetserve.NotFoundError, match="job j9 not found"):
        client.wait("j9")


def test_download_checks_the_sha256(tmp_path):
    data = b"onnx bytes"
    good = {"x-onnx-sha256": hashlib.sha256(data).hexdigest(),
            "content-disposition": 'attachment; filename="m1.onnx"'}  # fmt: skip
    client, _ = stub(lambda r: httpx.Response(200, content=data, headers=good))
    assert client.download_onnx("m1", tmp_path) == tmp_path / "m1.onnx"
    assert (tmp_path / "m1.onnx").read_bytes() == data
    bad = {"x-onnx-sha256": "0" * 64}
    client, _ = stub(lambda r: httpx.Response(200, content=data, headers=bad))
    with pytest.raises(hetserve.HetserveError, match="SHA-256"):
        client.download_onnx("m1", tmp_path / "other.onnx")
    assert not (tmp_path / "other.onnx").exists()


def test_submit_job_merges_keyword_sections_over_the_spec():
    client, seen = stub(lambda r: httpx.Response(202, json={"id": "j1", "status": "queued"}))
    base = {"dataset_id": "d1", "head": {"kind": "het", "num_factors": 4}}
    client.submit_job(base, head={"temperature": "auto"}, train={"epochs": 3})
    assert json.loads(seen[0].content) == {
        "dataset_id": "d1",
        "head": {"kind": "het", "num_factors": 4, "temperature": "auto"},
        "train": {"epochs": 3},
    }
    assert base["head"] == {"kind": "het", "num_factors": 4}  # the caller's spec is untouched


def test_ids_are_escaped_in_paths():
    client, seen = stub(lambda r: httpx.Response(200, json={}))
    client.get_job("../v1/aliases")
    assert seen[0].url.raw_path == b"/v1/jobs/..%2Fv1%2Faliases"
