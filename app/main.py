"""The FastAPI application: ``create_app(settings)`` and the module-level ``app``.

Entry point (docs/architecture.md): ``uvicorn app.main:app``. On start (lifespan) the app loads
(or generates) the API keys, with ``auto_migrate`` brings the schema to head, and builds
the serving runtime (``app.state.runtime``); on shutdown it stops the runtime's threads.

Every request passes ``app.gate.RequestGate`` first: API key, scope and throttling for
``/v1``, the body limit of the route, an audit line for every write, all before the body
is read. Every ``/v1`` router is mounted under one router that requires the key the gate
checked (``app.deps.require_api_key``); predict, the hot path, requires it on its own
router and is the app's first route (app/routers/predict.py). Health, readiness and ``/metrics`` are mounted
beside it, open, and so are the dashboard (``/ui``, ``/static``) and the API docs
(app/routers/ui.py).
"""

from __future__ import annotations

import gc
import importlib.metadata
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import db, disk_space, gate
from app.auth import KeyRing
from app.deps import require_api_key
from app.errors import (
    concurrent_change,
    disk_full,
    http_error,
    store_unavailable,
    validation_failed,
)
from app.logs import configure_logging
from app.routers import (
    aliases,
    dataset_corrections,
    dataset_items,
    datasets,
    document_body_errors,
    health,
    jobs,
    kserve,
    metrics,
    models,
    noise,
    operation_id,
    predict,
    ui,
)
from app.serving.runtime import ServingRuntime
from app.settings import Settings, get_settings

DESCRIPTION = """
Train **heteroscedastic (HET) classifiers** on request and serve predictions with
uncertainty. Upload a dataset, post a job, poll it (or follow its server-sent events),
then predict with the registered model.

Every `/v1` route needs `Authorization: Bearer <key>` (keys from `HETSERVE_API_KEYS`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Here rather than in lifespan so uvicorn's own start-up lines are JSON too.
    configure_logging(settings.log_level, "api")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.key_ring = KeyRing(settings)
        if settings.auto_migrate:
            db.migrate(settings)
        disk_space.ensure_reserve(settings.data_dir)  # room to delete on a full volume
        app.state.runtime = ServingRuntime(settings)
        # The app's long-lived objects (FastAPI, pydantic, SQLAlchemy, onnxruntime
        # bindings) all exist now: move them out of the collector's reach so full
        # collections stop walking them (measured: p99 of /predict under load roughly
        # halved, bench/serve_load.py).
        gc.freeze()
        try:
            yield
        finally:
            app.state.runtime.close()

    # /docs and /redoc come from app/routers/ui.py: the same pages, scripts served from here.
    app = FastAPI(
        title="hetserve",
        version=importlib.metadata.version("hetserve"),  # the images pip-install the package
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    generate_openapi = app.openapi

    def openapi() -> dict:
        # FastAPI's document (generated once, then cached on the app), with the 400 any
        # body may get: documented where it happens, in every operation that takes one.
        return app.openapi_schema or document_body_errors(generate_openapi())

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(IntegrityError, concurrent_change)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)  # a 405's whole Allow
    app.add_exception_handler(DBAPIError, store_unavailable)  # IntegrityError: its own, above
    app.add_exception_handler(SATimeoutError, store_unavailable)
    app.add_exception_handler(OSError, disk_full)  # ENOSPC: 507; any other OSError: 500
    gate.install(app, settings)
    # Predict, the hot path, is the first route of the app's own router: matched before
    # any other, and without an included router's matching (about 10 µs a request).
    app.router.routes.extend(predict.router.routes)
    v1 = APIRouter(dependencies=[Depends(require_api_key)])
    for module in (datasets, dataset_corrections, dataset_items, jobs, models, aliases, noise):
        v1.include_router(module.router)
    app.include_router(health.router)
    app.include_router(v1)
    app.include_router(metrics.router)
    app.include_router(kserve.router)  # /v1/models/{id}/triton and the /v2 protocol
    ui.install(app)
    return app


app = create_app()
