"""The web dashboard (``GET /ui``) and the API docs (``/docs``, ``/redoc``), offline.

Everything the browser loads comes from this service: the dashboard is plain HTML and JS
modules under app/static/ui/, the chart library and the Swagger UI / ReDoc bundles are
vendored under app/static/vendor/ (scripts/vendor-assets.sh reproduces them). FastAPI's
own docs pages load their scripts from a CDN, so ``create_app`` turns them off and
``install`` serves the same pages from the vendored files.

None of these pages needs the API key: they hold no data. The dashboard asks for the key
in the browser and sends it on every ``/v1`` request it makes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
SWAGGER = "vendor/swagger-ui-dist-5.35.0"
REDOC = "vendor/redoc-2.5.2"

router = APIRouter(include_in_schema=False)


def _static(request: Request, path: str) -> str:
    return f"{request.scope.get('root_path', '').rstrip('/')}/static/{path}"


@router.get("/ui")
def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "ui" / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_static(request, f"{SWAGGER}/swagger-ui-bundle.js"),
        swagger_css_url=_static(request, f"{SWAGGER}/swagger-ui.css"),
        swagger_favicon_url=_static(request, f"{SWAGGER}/favicon-32x32.png"),
        # The default asks validator.swagger.io for a badge: another host.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_static(request, f"{REDOC}/redoc.standalone.js"),
        redoc_favicon_url=_static(request, f"{SWAGGER}/favicon-32x32.png"),
        with_google_fonts=False,
    )


def install(app: FastAPI) -> None:
    """Mount ``/static`` and add ``/ui``, ``/docs`` and ``/redoc`` (create the app with
    ``docs_url=None, redoc_url=None``)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
