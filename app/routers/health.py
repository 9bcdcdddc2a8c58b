"""Liveness and readiness (no API key: load balancers and compose call these).

``/readyz`` is 503 unless the store answers, the broker answers and the data folder
takes a new file (created and deleted: a read-only or full volume fails it). It also
lists, under ``model_files``, the models whose ONNX file failed its integrity check in
this process; those alone do not make it 503: the artifact volume is shared, so every
API process would drop out of rotation together and stop serving the models that are
intact. Alert on ``model_files`` instead.

``disk_space`` is "ok", or "low: N bytes free ..." when the data folder's volume has less
than ``HETSERVE_MIN_FREE_BYTES`` free. Like ``model_files`` it does not make ``/readyz``
503 (predictions need no disk, and the volume is shared): alert on it. Each call also
puts back app/disk_space.py's reserve if a delete on a full volume used it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app import broker, db, disk_space
from app.deps import RuntimeDep, SettingsDep
from app.serving.metrics import InstrumentedRoute
from app.settings import Settings

router = APIRouter(tags=["health"], route_class=InstrumentedRoute)


def disk_space_state(settings: Settings) -> str:
    """``disk_space``: "ok", or "low: ..." under settings.min_free_bytes free on the data
    folder's volume."""
    disk_space.ensure_reserve(settings.data_dir)
    free = disk_space.free_bytes(settings.data_dir)
    if free < settings.min_free_bytes:
        return f"low: {free} bytes free, under HETSERVE_MIN_FREE_BYTES={settings.min_free_bytes}"
    return "ok"


def check_data_dir(settings: Settings) -> None:
    """Raise unless a file can be created (and removed) in the data folder."""
    fd, name = tempfile.mkstemp(prefix=".readyz-", dir=settings.data_dir)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(name)


@router.get(
    "/healthz",
    summary="The process is up",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The store and the broker answer, the data folder is writable",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "ready",
                        "store": "ok",
                        "broker": "ok",
                        "data_dir": "ok",
                        "model_files": "ok",
                        "disk_space": "ok",
                    }
                }
            }
        },
        503: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "unavailable",
                        "store": "ok",
                        "broker": "OperationalError: ...",
                        "data_dir": "OSError: [Errno 30] Read-only file system: ...",
                        "model_files": {"failed_integrity": ["3f2a..."]},
                        "disk_space": "low: 314572 bytes free, under"
                        " HETSERVE_MIN_FREE_BYTES=1073741824",
                    }
                }
            }
        },
    },
)
async def readyz(settings: SettingsDep, runtime: RuntimeDep) -> JSONResponse:
    checks: dict[str, object] = {}
    for name, check in (("store", db.ping), ("broker", broker.ping), ("data_dir", check_data_dir)):
        try:
            await run_in_threadpool(check, settings)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; say which and why
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    failed = sorted(runtime.sessions.failed)
    checks["model_files"] = {"failed_integrity": failed} if failed else "ok"
    try:
        checks["disk_space"] = await run_in_threadpool(disk_space_state, settings)
    except OSError as exc:  # no data folder: data_dir already says so
        checks["disk_space"] = f"{type(exc).__name__}: {exc}"[:300]
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )
