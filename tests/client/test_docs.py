"""docs/client.md's code blocks run, in order, in one namespace, against a real service.

A block preceded by ``<!-- test: needs X -->`` names the route or field it shows
(``noise``: the noise and label-issue routes, ``predictive``: the predict field); the
service must have every one of them."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.service_stack import API_KEY

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCK = re.compile(r"(?:<!-- test: needs (\w+) -->\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


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


def test_client_doc_runs_whole(service_url, monkeypatch, tmp_path):
    run_blocks(service_url, monkeypatch, tmp_path, skip=set())
