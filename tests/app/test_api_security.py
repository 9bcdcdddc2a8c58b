"""Security of the API key: throttled failures, predict-only keys, a keys file re-read
without a restart, an audit line per write (a fingerprint, never the key), and /metrics
that lists no model id without a key."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
from fastapi.testclient import TestClient

from app.auth import fingerprint, generated_key
from app.main import create_app
from app.settings import Settings
from tests.support.model_serving import D, exported, make_settings, register
from tests.support.service_client import npz_bytes, tiny_arrays

FULL, PREDICT = "full-key-0123456789", "predict-key-0123456789"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def model_settings(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("security") / "data")
    return settings, register(settings, exported("het"))


def app_for(settings, **overrides):
    return create_app(settings.model_copy(update=overrides))


def test_failed_authentication_is_throttled_per_address(tmp_path):
    settings = make_settings(tmp_path / "data", auth_failure_limit=3, auth_failure_window_s=60)
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=bearer("wrong")).status_code == 401
        for headers in (bearer("wrong"), bearer("another wrong one"), {}):
            r = client.get("/v1/jobs", headers=headers)
            assert r.status_code == 429, r.text
            assert 0 < int(r.headers["retry-after"]) <= 61 and "detail" in r.json()
        # The failures are throttled, not the address: the valid key from the same
        # address is served, and does not lift the throttle for wrong keys.
        assert client.get("/v1/jobs", headers=bearer(settings.api_keys)).status_code == 200
        assert client.get("/v1/jobs", headers=bearer("wrong")).status_code == 429
        assert client.get("/healthz").status_code == 200
        # Missing keys are not guesses: they do not count.
    with TestClient(create_app(settings)) as client:
        for _ in range(5):
            assert client.get("/v1/jobs").status_code == 401


def test_a_predict_only_key_predicts_and_reads_models_but_writes_nothing(model_settings):
    settings, model_id = model_settings
    app = app_for(settings, api_keys=f"{FULL},{PREDICT}:predict")
    with TestClient(app) as client:
        key = bearer(PREDICT)
        r = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0.1] * D]}, headers=key)
        assert r.status_code == 200, r.text
        assert client.get("/v1/models", headers=key).status_code == 200
        assert client.get(f"/v1/models/{model_id}", headers=key).status_code == 200
        assert client.get(f"/v1/models/{model_id}/onnx", headers=key).status_code == 200
        refused = [
            ("POST", "/v1/datasets"),
            ("DELETE", "/v1/datasets/abc"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs/abc/cancel"),
            ("DELETE", f"/v1/models/{model_id}"),
            ("PUT", "/v1/aliases/prod"),
            ("DELETE", "/v1/aliases/prod"),
        ]
        for method, path in refused:
            r = client.request(method, path, headers=key, content=b"{}")
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["detail"] == "this API key may only predict and read models"
        r = client.put("/v1/aliases/prod", json={"model_id": model_id}, headers=bearer(FULL))
        assert r.status_code == 200, r.text


def test_keys_file_is_re_read_when_it_changes(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated by ops\nold-key-0123456789\n")
    settings = Settings(data_dir=tmp_path / "data", api_keys_file=keys_file)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=bearer("old-key-0123456789")).status_code == 200
        keys_file.write_text("new-key-0123456789\nro-key-0123456789:predict\n")
        st = keys_file.stat()
        os.utime(keys_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert client.get("/v1/jobs", headers=bearer("old-key-0123456789")).status_code == 401
        assert client.get("/v1/jobs", headers=bearer("new-key-0123456789")).status_code == 200
        assert client.get("/v1/jobs", headers=bearer("ro-key-0123456789")).status_code == 403
        keys_file.write_text("")  # emptied by mistake: the previous keys stay
        os.utime(keys_file, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
        assert client.get("/v1/jobs", headers=bearer("new-key-0123456789")).status_code == 200
    assert not (tmp_path / "data" / "api_key").exists()  # nothing generated


def test_every_write_leaves_an_audit_line_and_no_log_line_holds_a_key(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "data", api_keys=f"{FULL},{PREDICT}:predict")
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/datasets",
            files={"file": ("tiny.npz", npz_bytes(**tiny_arrays()))},
            headers=bearer(FULL),
        )
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        assert client.delete(f"/v1/datasets/{dataset_id}", headers=bearer(FULL)).status_code == 204
        assert client.get("/v1/datasets", headers=bearer(FULL)).status_code == 200  # a read
        client.post("/v1/jobs", json={}, headers=bearer(PREDICT))  # refused, audited
        client.get("/v1/jobs", headers=bearer("wrong-key-0123456789"))
    audits = [r for r in caplog.records if r.name == "hetserve.audit"]
    assert [(a.method, a.route, a.status) for a in audits] == [
        ("POST", "/v1/datasets", 201),
        ("DELETE", "/v1/datasets/{dataset_id}", 204),
        ("POST", None, 403),
    ]
    assert audits[2].who == fingerprint(PREDICT)
    assert audits[0].who == fingerprint(FULL) == hashlib.sha256(FULL.encode()).hexdigest()[:8]
    assert audits[0].ids == {"created_id": dataset_id}
    assert audits[1].ids == {"dataset_id": dataset_id}
    for record in caplog.records:
        text = record.getMessage() + json.dumps(vars(record), default=str)
        for key in (FULL, PREDICT, "wrong-key-0123456789"):
            assert key not in text, record


def test_a_generated_key_is_never_printed(tmp_path, capsys):
    settings = Settings(data_dir=tmp_path / "data")
    key = generated_key(settings)
    assert key and key not in capsys.readouterr().err


def test_metrics_list_model_ids_only_to_a_key(model_settings):
    settings, model_id = model_settings
    with TestClient(app_for(settings)) as client:
        body = {"inputs": [[0.1] * D]}
        assert (
            client.post(
                f"/v1/models/{model_id}/predict", json=body, headers=bearer(settings.api_keys)
            ).status_code
            == 200
        )
        open_text = client.get("/metrics").text
        assert model_id not in open_text and 'model="' not in open_text
        assert "hetserve_http_requests_total" in open_text
        assert "hetserve_inference_duration_seconds_count" in open_text
        keyed = client.get("/metrics", headers=bearer(settings.api_keys)).text
        assert f'model="{model_id}"' in keyed
