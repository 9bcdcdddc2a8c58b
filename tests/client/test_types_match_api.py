"""The client's answer types name exactly the fields the API's OpenAPI document declares.

The client cannot import the server's schemas (it ships with httpx alone), so its
TypedDicts restate the field names; this test keeps the two in step.
"""

from __future__ import annotations

import pytest

from app.main import create_app
from hetserve import _types

PAIRS = [
    (_types.Dataset, "DatasetOut"),
    (_types.DatasetLineage, "DatasetLineage"),
    (_types.Progress, "Progress"),
    (_types.Job, "JobOut"),
    (_types.Model, "ModelOut"),
    (_types.Alias, "AliasOut"),
    (_types.LabelIssue, "LabelIssue"),
    (_types.LabelIssues, "LabelIssuesOut"),
]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("HETSERVE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    return create_app().openapi()["components"]["schemas"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize(("typed", "schema"), PAIRS, ids=[s for _, s in PAIRS])
def test_client_type_has_the_api_fields(schemas, typed, schema):
    assert set(typed.__annotations__) == set(schemas[schema]["properties"])
