"""docs/client.md's code blocks run, in order, in one namespace, against a real service.

A block preceded by ``<!-- test: needs X -->`` uses a route or field that the service
may not have yet (``noise``: the noise and label-issue routes, ``predictive``: the
predict field): the first test runs every block the service supports, the second all of
them, and is skipped, naming what is missing, until the service has it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import API_KEY

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCK = re.compile(r"(?:<!-- test: needs (\w+) -->\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def supported(url: str) -> set[str]:
    spec = httpx.get(f"{url}/openapi.json").json()
    have = set()
    if "/v1/models/{model_id}/noise" in spec["paths"]:
        have.add("noise")
    predict = spec["paths"]["/v1/models/{model_id}/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    if "predictive" in schema.get("properties", {}):
        have.add("predictive")
    return have


def run_blocks(url: str, monkeypatch, tmp_path, skip: set[str]) -> None:
    monkeypatch.setenv("HETSERVE_URL", url)
    monkeypatch.setenv("HETSERVE_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "client_doc"}
    for need, code in blocks():
        if need in skip:
            continue
        exec(compile(code, f"{DOC}:{need or 'block'}", "exec"), namespace)


def test_the_doc_has_the_walk_through():
    needs = [need for need, _ in blocks()]
    assert len(needs) >= 5 and {"noise", "predictive"} <= set(needs)


def test_client_doc_runs(service_url, monkeypatch, tmp_path):
    run_blocks(
        service_url, monkeypatch, tmp_path, skip={"noise", "predictive"} - supported(service_url)
    )


def test_client_doc_runs_whole(service_url, monkeypatch, tmp_path):
    missing = {"noise", "predictive"} - supported(service_url)
    if missing:
        pytest.skip(f"the service has no {' and no '.join(sorted(missing))} yet")
    run_blocks(service_url, monkeypatch, tmp_path, skip=set())
