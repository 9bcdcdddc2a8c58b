"""Exception handlers that keep every client error a JSON 4xx.

FastAPI's own 422 echoes each offending value back in full: a 60 MB body came back as a
60 MB error, and a NaN or Infinity (which Python's JSON parser accepts) made the error
itself unencodable, a 500. Here each echoed value is cut to a short excerpt and anything
JSON cannot carry becomes text.

A store that cannot be reached is a 503 ``{"detail": "the store is unavailable; retry"}``
with ``Retry-After``, not a plain-text 500. A full data volume (ENOSPC writing a file,
SQLite's "database or disk is full") is a 507 ``{"detail": "no space left on the data
volume; ..."}``: the request changed nothing, and deleting datasets or models frees room.

A 405 says in ``Allow`` every method the OpenAPI document lists for the path (Starlette's
names only the methods of the one route object it tried, while FastAPI makes one per
method).
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.disk_space import NO_SPACE, is_disk_full

EXCERPT_CHARS = 120


def excerpt(value: object) -> object:
    """``value`` if it is a short JSON scalar, else a short text excerpt of it."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    text = value if isinstance(value, str) else repr(value)
    if len(text) > EXCERPT_CHARS:
        return text[:EXCERPT_CHARS] + f"… ({len(text)} characters)"
    return text


def json_safe_error(error: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
    out["loc"] = [excerpt(part) for part in error.get("loc", ())]
    if "input" in error:
        out["input"] = excerpt(error["input"])
    if error.get("ctx"):
        out["ctx"] = {k: excerpt(v) for k, v in error["ctx"].items()}
    return out


async def validation_failed(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=422, content={"detail": [json_safe_error(e) for e in exc.errors()]}
    )


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@lru_cache(maxsize=256)
def _path_regex(template: str) -> re.Pattern[str]:
    return compile_path(template)[0]


def documented_methods(openapi: dict[str, Any], path: str) -> list[str]:
    """The methods the OpenAPI document lists for the path template ``path`` matches
    (upper case, sorted); empty when none matches."""
    for template, operations in openapi.get("paths", {}).items():
        if _path_regex(template).match(path):
            return sorted(m.upper() for m in operations if m in HTTP_METHODS)
    return []


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, with a 405's ``Allow`` made whole."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        methods = documented_methods(request.app.openapi(), request.scope["path"])
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


async def concurrent_change(_request: Request, exc: Exception) -> JSONResponse:
    # Routes check before they write (unknown dataset id, a dataset still in use); a
    # concurrent request can still slip in between, and the database's constraint then
    # refuses the write. That is a conflict to retry, not a server error.
    assert isinstance(exc, IntegrityError)
    return JSONResponse(
        status_code=409,
        content={"detail": "a concurrent change conflicted with this request; retry it"},
    )


STORE_RETRY_AFTER_S = 5
store_log = logging.getLogger("hetserve.store")


def is_connection_error(exc: BaseException) -> bool:
    """The store could not be reached (or dropped the connection), as opposed to a bad
    query: an OperationalError (connection refused, server gone, SQLite locked), a
    connection SQLAlchemy invalidated, or no pooled connection in time."""
    if isinstance(exc, OperationalError | SATimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # Connection failures are a 503 to retry, in JSON like every other error; any other
    # database error stays a server error (raised on to the 500 handler).
    if is_disk_full(exc):
        return await disk_full(_request, exc)
    if not is_connection_error(exc):
        raise exc
    store_log.warning("the store is unavailable: %s", type(exc).__name__, exc_info=False)
    return JSONResponse(
        status_code=503,
        content={"detail": "the store is unavailable; retry"},
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


DISK_FULL_DETAIL = f"{NO_SPACE}; delete unused datasets or models (or add space) and retry"


async def disk_full(_request: Request, exc: Exception) -> JSONResponse:
    # Registered for OSError: only a full volume is a 507; any other OSError stays a 500.
    if not is_disk_full(exc):
        raise exc
    store_log.warning("%s: %s", NO_SPACE, exc)
    return JSONResponse(status_code=507, content={"detail": DISK_FULL_DETAIL})
