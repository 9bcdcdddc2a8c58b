"""HTTP routers and the request-scoped dependencies they share."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns normally.

    Use it as ``Depends(get_session, scope="function")``: with FastAPI's default
    ("request") scope the commit would run only after the response was sent, and a
    client's next request could miss its own write."""
    with session_scope(request.app.state.settings) as session:
        yield session


def get_artifacts(request: Request) -> ArtifactStore:
    return ArtifactStore(request.app.state.settings.data_dir)
