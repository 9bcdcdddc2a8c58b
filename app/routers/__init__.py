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
    """One transaction per request: committed when the handler returns normally."""
    with session_scope(request.app.state.settings) as session:
        yield session


def get_artifacts(request: Request) -> ArtifactStore:
    return ArtifactStore(request.app.state.settings.data_dir)
