"""Every /v1 route and every /v2/models route (the Open Inference Protocol's; its errors
say "error", not "detail") needs the API key, whichever router declares it: the routes are
enumerated from the app itself, so a route added later is checked without a change here."""

from __future__ import annotations

import re

import pytest

from app.main import create_app
from tests.support.service_client import API_KEY, make_settings

OPEN_PATHS = {
    "/ui",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
}
KEYED = ("/v1/", "/v2/models/")


def http_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    try:  # newer FastAPI keeps included routers as one entry each in app.routes
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older versions copy every route into app.routes
        routes = app.routes
    else:
        routes = list(iter_route_contexts(app.routes))
    return sorted(
        (method, route.path)
        for route in routes
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
    )


@pytest.fixture(scope="module")
def app_and_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    app = create_app(make_settings(tmp_path_factory.mktemp("auth")))
    with TestClient(app) as client:
        yield app, client


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "abc", path)


def test_only_health_metrics_and_docs_are_open(app_and_client):
    app, _ = app_and_client
    paths = {path for _, path in http_routes(app)}
    assert {p for p in paths if not p.startswith(KEYED)} <= OPEN_PATHS
    assert len([p for p in paths if p.startswith("/v1/")]) >= 10  # the enumeration saw them


@pytest.mark.parametrize(
    "headers, detail",
    [
        ({}, "missing API key"),
        ({"Authorization": f"Basic {API_KEY}"}, "missing API key"),
        ({"Authorization": "Bearer not-the-key"}, "invalid API key"),
    ],
)
def test_every_v1_route_answers_401_without_a_valid_key(app_and_client, headers, detail):
    app, client = app_and_client
    keyed = [(m, p) for m, p in http_routes(app) if p.startswith(KEYED)]
    assert any(p.startswith("/v2/models/") for _, p in keyed)
    for method, path in keyed:
        r = client.request(method, concrete(path), headers=headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer", (method, path)
        message = r.json()["error" if path.startswith("/v2/") else "detail"]
        assert message.startswith(detail), (method, path, r.text)


def test_a_valid_key_gets_past_the_check_on_every_v1_route(app_and_client):
    """The same enumeration with the key: no route answers 401 (the check is not stuck)."""
    app, client = app_and_client
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for method, path in http_routes(app):
        if path.startswith(KEYED):
            r = client.request(method, concrete(path), headers=auth)
            assert r.status_code != 401, (method, path, r.text)
