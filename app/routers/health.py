"""Liveness and readiness (no API key: load balancers and compose call these)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app import broker, db
from app.deps import SettingsDep
from app.serving.metrics import InstrumentedRoute

router = APIRouter(tags=["health"], route_class=InstrumentedRoute)


@router.get(
    "/healthz",
    summary="The process is up",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The store and the broker answer",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"status": "ready", "store": "ok", "broker": "ok"}}
            }
        },
        503: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "unavailable",
                        "store": "ok",
                        "broker": "OperationalError: ...",
                    }
                }
            }
        },
    },
)
async def readyz(settings: SettingsDep) -> JSONResponse:
    checks = {}
    for name, check in (("store", db.ping), ("broker", broker.ping)):
        try:
            await run_in_threadpool(check, settings)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; say which and why
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )
