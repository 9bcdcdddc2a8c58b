"""/ui, /static, /docs and /redoc without a browser: served without a key, and every
script, stylesheet and module import they name is a file of this service (the browser
tests in tests/browser render them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.routers.ui import REDOC, STATIC_DIR, SWAGGER
from tests.support.service_client import client_for, make_settings

ROOT = Path(__file__).resolve().parents[2]
URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"'#]+)["']""")
JS_IMPORT = re.compile(
    r"""(?:^|\n)\s*import\s[^;]*?from\s+["']([^"']+)["']|import\(["']([^"']+)["']\)"""
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with client_for(make_settings(tmp_path_factory.mktemp("ui"))) as c:
        yield c


def test_dashboard_is_served_without_a_key_and_names_only_local_files(client):
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = URL_ATTR.findall(r.text)
    assert "static/ui/js/main.js" in refs
    for ref in refs:
        if ref.startswith("data:") or ref == "docs":
            continue
        assert not re.match(r"^[a-z]+://|^//", ref), ref
        assert client.get(f"/{ref}").status_code == 200, ref


def test_every_module_import_resolves_to_a_served_file(client):
    modules = sorted((STATIC_DIR / "ui" / "js").rglob("*.js"))
    assert len(modules) >= 5
    for module in modules:
        for spec in filter(
            None, (s for pair in JS_IMPORT.findall(module.read_text()) for s in pair)
        ):
            assert spec.startswith("."), (module, spec)  # relative: no bare or remote import
            target = (module.parent / spec).resolve()
            assert target.is_file(), (module, spec)
            path = target.relative_to(STATIC_DIR).as_posix()
            r = client.get(f"/static/{path}")
            assert r.status_code == 200 and "javascript" in r.headers["content-type"], path


@pytest.mark.parametrize(
    "page, assets",
    [
        ("/docs", [f"{SWAGGER}/swagger-ui-bundle.js", f"{SWAGGER}/swagger-ui.css"]),
        ("/redoc", [f"{REDOC}/redoc.standalone.js"]),
    ],
)
def test_api_docs_load_their_scripts_from_this_service(client, page, assets):
    r = client.get(page)
    assert r.status_code == 200
    for asset in assets:
        assert f"/static/{asset}" in r.text
        assert client.get(f"/static/{asset}").status_code == 200
    external = [u for u in URL_ATTR.findall(r.text) if re.match(r"^[a-z]+://|^//", u)]
    assert external == []
    assert "fonts.googleapis" not in r.text and "cdn." not in r.text


def test_vendored_folders_match_the_script_and_carry_their_licences():
    script = (ROOT / "scripts" / "vendor-assets.sh").read_text()
    versions = dict(re.findall(r"^(UPLOT|SWAGGER|REDOC)=(\S+)$", script, re.M))
    expected = {
        f"uplot-{versions['UPLOT']}",
        f"swagger-ui-dist-{versions['SWAGGER']}",
        f"redoc-{versions['REDOC']}",
    }
    folders = {p.name for p in (STATIC_DIR / "vendor").iterdir()}
    assert folders == expected
    assert f"vendor/swagger-ui-dist-{versions['SWAGGER']}" == SWAGGER
    assert f"vendor/redoc-{versions['REDOC']}" == REDOC
    for folder in folders:
        assert (STATIC_DIR / "vendor" / folder / "LICENSE").is_file(), folder
