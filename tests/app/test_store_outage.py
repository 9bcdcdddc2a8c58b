"""PostgreSQL behind a TCP proxy the test cuts and restores, under a real uvicorn: while
the store is unreachable the API answers 503 in JSON with Retry-After, and models loaded
before the cut keep being predicted."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.model_serving import (
    AUTH,
    D,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
)
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until


@pytest.fixture
def proxied_store(tmp_path):
    with scratch_redis_postgres("relapi_outage") as stores:
        url = make_url(stores["HETSERVE_DATABASE_URL"])
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        proxy.restore()
        stores["HETSERVE_DATABASE_URL"] = url.set(port=proxy.port).render_as_string(
            hide_password=False
        )
        try:
            yield proxy, stores
        finally:
            proxy.cut()


def test_store_outage_is_a_json_503_and_loaded_models_keep_serving(tmp_path, proxied_store):
    proxy, stores = proxied_store
    data = tmp_path / "data"
    settings = make_settings(
        data,
        database_url=stores["HETSERVE_DATABASE_URL"],
        broker_url=stores["HETSERVE_BROKER_URL"],
        broker_key_prefix=stores["HETSERVE_BROKER_KEY_PREFIX"],
    )
    model_id = register(settings, exported("het"))
    from app import db

    db.get_engine(settings).dispose()  # this process keeps no connection through the proxy
    env = {**settings_env(data, model_lookup_ttl_s=0.5), **stores}
    body = {"inputs": [[0.1] * D], "mc_samples": 10}
    with live_server(env) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.post(f"/v1/models/{model_id}/predict", json=body).status_code == 200

        proxy.cut()
        r = client.get("/v1/jobs")
        assert r.status_code == 503, r.text
        assert r.json() == {"detail": "the store is unavailable; retry"}
        assert int(r.headers["retry-after"]) > 0
        for _ in range(3):  # past the lookup ttl: the refresh fails, the cached entry serves
            r = client.post(f"/v1/models/{model_id}/predict", json=body)
            assert r.status_code == 200, r.text
            time.sleep(0.4)
        r = client.get("/v1/models/no-such-model")
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert client.get("/readyz").status_code == 503

        proxy.restore()
        wait_until(lambda: client.get("/v1/jobs").status_code == 200, 15, "the store back")
        assert client.post(f"/v1/models/{model_id}/predict", json=body).status_code == 200
