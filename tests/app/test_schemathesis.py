"""Schemathesis over the whole OpenAPI spec of a live API (a registered model, a valid
key), bounded to about nine hundred generated requests: zero server errors (the contract:
a 5xx is a bug), and the schema is true (every status documented, a 405's ``Allow`` the
documented methods, a schema-valid request not refused as invalid)."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support.model_serving import (
    API_KEY,
    AUTH,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
)

# Zero server errors, and the schema is true: every status answered is documented for
# its operation, a 405 says what is allowed (Allow), and a request the schema allows is
# not refused as invalid (4xx other than 401/403/404/409).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "positive_data_acceptance",
)
MAX_EXAMPLES = 12  # per operation and phase: 20 operations -> ~900 requests, ~1 minute

# GET and POST model routes (/v1 and the /v2 protocol's) use an alias of the registered
# model, so predict and infer are fuzzed past the 404 (the alias also turns a fuzzed
# DELETE of the model into a 409).
CONFIG = """
[[operations]]
include-path-regex = "^/v[12]/models/\\\\{model_id\\\\}(/predict|/onnx|/triton|/ready|/infer)?$"
include-method-regex = "^(GET|POST)$"
parameters = { "path.model_id" = "fuzz" }

# A 422 to a schema-valid body where it names what no schema can state: a dataset id or
# a model id that does not exist (a job, an alias), inputs of another width than the
# model's (predict; the model's input shape is data, not schema). Every other status of
# these operations is still checked.
[[operations]]
include-path-regex = "^/v1/jobs$|^/v1/aliases/\\\\{name\\\\}$|^/v[12]/models/\\\\{model_id\\\\}/(predict|infer)$"
include-method-regex = "^(POST|PUT)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

# An item as an image of a dataset of vectors (or its values of one of images): whether a
# dataset holds images is data, not schema.
[[operations]]
include-path-regex = "^/v1/datasets/\\\\{dataset_id\\\\}/items/\\\\{index\\\\}$"
include-method-regex = "^GET$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def test_a_405_allows_every_documented_method(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        for path, allowed in (
            ("/v1/jobs", "GET, POST"),
            ("/v1/jobs/abc", "DELETE, GET"),
            ("/v1/aliases/prod", "DELETE, PUT"),
            ("/v1/datasets", "GET, POST"),
        ):
            r = client.options(path, headers=AUTH)
            assert (r.status_code, r.headers["allow"]) == (405, allowed), path
            assert "detail" in r.json()


def test_no_server_errors_and_a_true_schema(tmp_path):
    data = tmp_path / "data"
    settings = make_settings(data)
    model_id = register(settings, exported("het"))
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    with live_server(settings_env(data)) as url:
        alias = httpx.put(f"{url}/v1/aliases/fuzz", json={"model_id": model_id}, headers=AUTH)
        assert alias.status_code == 200
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{url}/openapi.json",
                "--checks",
                ",".join(CHECKS),
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "20261125",
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--generation-database",
                "none",
                "--no-shrink",
                "--no-color",
            ],
            cwd=tmp_path,  # picks up schemathesis.toml
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and "passed" in run.stdout
