"""The OpenAPI document's operationIds: one per operation, unique, "<tag>-<function>",
and the published ones never change (generated clients call them by name). A new route
adds its id here; an id that disappears or changes fails."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

from app.main import create_app
from tests.support.service_client import make_settings

PUBLISHED = {
    "health-healthz",
    "health-readyz",
    "health-prometheus_metrics",
    "datasets-upload_dataset",
    "datasets-list_datasets",
    "datasets-get_dataset",
    "datasets-delete_dataset",
    "jobs-create_job",
    "jobs-list_jobs",
    "jobs-get_job",
    "jobs-cancel_job",
    "jobs-job_events",
    "models-list_models",
    "models-get_model",
    "models-delete_model",
    "models-get_onnx",
    "aliases-put_alias",
    "aliases-list_aliases",
    "aliases-delete_alias",
    "predict-predict",
    "kserve-get_triton_repository",
    "kserve-server_metadata",
    "kserve-server_live",
    "kserve-server_ready",
    "kserve-model_metadata",
    "kserve-model_ready",
    "kserve-infer",
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    return create_app(make_settings(tmp_path_factory.mktemp("openapi"))).openapi()


@pytest.fixture(scope="module")
def operations(spec) -> list[dict]:
    return [
        op | {"_where": f"{method.upper()} {path}"}
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
    ]


def test_operation_ids_are_unique_stable_and_named_by_tag(operations):
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert PUBLISHED <= set(ids), f"published operationIds gone: {sorted(PUBLISHED - set(ids))}"
    for op in operations:
        assert re.fullmatch(r"[a-z0-9]+-[a-z_0-9]+", op["operationId"]), op["_where"]
        assert op["operationId"].startswith(f"{op['tags'][0]}-"), op["_where"]


def test_every_operation_has_a_summary(operations):
    assert [op["_where"] for op in operations if not op.get("summary")] == []


def test_every_json_request_body_has_an_example(spec, operations):
    spec_schemas = spec["components"]["schemas"]
    missing = []
    for op in operations:
        media = op.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue
        schema = media.get("schema", {})
        if "$ref" in schema:
            schema = spec_schemas[schema["$ref"].rsplit("/", 1)[1]]
        if not (media.get("example") or media.get("examples") or schema.get("examples")):
            missing.append(op["_where"])
    assert missing == []


def test_the_documents_version_is_the_installed_packages(spec):
    assert spec["info"]["version"] == importlib.metadata.version("hetserve")
