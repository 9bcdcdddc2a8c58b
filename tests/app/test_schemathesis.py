"""Schemathesis over the whole OpenAPI spec of a live API (a registered model, a valid
key), bounded to about nine hundred generated requests: zero server errors (the contract:
a 5xx is a bug)."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.app.serving_support import (
    API_KEY,
    AUTH,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
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
"""


def test_no_server_errors_anywhere(tmp_path):
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
                "not_a_server_error",
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
