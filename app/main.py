"""The FastAPI application: ``create_app(settings)`` and the module-level ``app``.

Entry point (docs/architecture.md): ``uvicorn app.main:app``. On start (lifespan) the app loads
(or generates) the API keys, with ``auto_migrate`` brings the schema to head, and builds
the serving runtime (``app.state.runtime``); on shutdown it stops the runtime's threads.

Every ``/v1`` router is mounted under one router that requires the API key
(``app.deps.require_api_key``): a route under ``/v1`` cannot be reached without one.
Health, readiness and ``/metrics`` are mounted beside it, open.
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError

from app import db
from app.auth import load_or_create_keys
from app.deps import require_api_key
from app.errors import concurrent_change, validation_failed
from app.logs import configure_logging
from app.routers import aliases, datasets, health, jobs, metrics, models, noise, predict
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
        app.state.api_keys = load_or_create_keys(settings)
        if settings.auto_migrate:
            db.migrate(settings)
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

    app = FastAPI(title="hetserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.add_exception_handler(IntegrityError, concurrent_change)
    app.add_exception_handler(RequestValidationError, validation_failed)
    v1 = APIRouter(dependencies=[Depends(require_api_key)])
    for module in (datasets, jobs, models, aliases, predict, noise):
        v1.include_router(module.router)
    app.include_router(health.router)
    app.include_router(v1)
    app.include_router(metrics.router)
    return app


app = create_app()
