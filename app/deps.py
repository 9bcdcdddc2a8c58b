"""The request-scoped dependencies every router shares, as ``Annotated`` aliases.

    def get_job(job_id: str, session: SessionDep) -> JobOut: ...

- ``SettingsDep``: the app's settings (``app.state.settings``).
- ``SessionDep``: one database transaction per request, committed before the response
  is sent.
- ``ArtifactsDep``: the content-addressed artifact store under ``settings.data_dir``.
- ``RuntimeDep``: the serving runtime the app's lifespan built (``app.state.runtime``).
- ``ApiKeyDep``: the caller's API key (``app.auth.ApiKey``: scope and fingerprint),
  checked by ``app.gate.RequestGate`` before the body was read. Routers do not declare
  it themselves: app/main.py mounts every ``/v1`` router under one router that requires it.

Everything that only reads ``app.state`` is an ``async def``: FastAPI runs a plain
``def`` dependency in a worker thread, a hop that costs more than the lookup itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from app.artifacts import ArtifactStore
from app.auth import ApiKey, bearer
from app.db import session_scope
from app.serving.runtime import ServingRuntime
from app.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns normally.

    ``SessionDep`` declares it with ``scope="function"``: with FastAPI's default
    ("request") scope the commit would run only after the response was sent, and a
    client's next request could miss its own write."""
    with session_scope(request.app.state.settings) as session:
        yield session


async def get_artifacts(request: Request) -> ArtifactStore:
    return ArtifactStore(request.app.state.settings.data_dir)


async def get_runtime(request: Request) -> ServingRuntime:
    runtime: ServingRuntime = request.app.state.runtime
    return runtime


async def require_api_key(
    request: Request,
    # Declared for the OpenAPI document (the security scheme); the gate did the check.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The key the gate (app/gate.py) checked for this /v1 request; 401 if it did not
    (a route mounted where the gate does not look)."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is None:
        raise HTTPException(401, "missing API key", headers={"WWW-Authenticate": "Bearer"})
    return key


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
RuntimeDep = Annotated[ServingRuntime, Depends(get_runtime)]
ApiKeyDep = Annotated[ApiKey, Depends(require_api_key)]
