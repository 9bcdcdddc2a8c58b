"""Exception handlers that keep every client error a JSON 4xx.

FastAPI's own 422 echoes each offending value back in full: a 60 MB body came back as a
60 MB error, and a NaN or Infinity (which Python's JSON parser accepts) made the error
itself unencodable, a 500. Here each echoed value is cut to a short excerpt and anything
JSON cannot carry becomes text.
"""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

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


def json_safe_error(error: dict) -> dict:
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


async def concurrent_change(_request: Request, exc: Exception) -> JSONResponse:
    # Routes check before they write (unknown dataset id, a dataset still in use); a
    # concurrent request can still slip in between, and the database's constraint then
    # refuses the write. That is a conflict to retry, not a server error.
    assert isinstance(exc, IntegrityError)
    return JSONResponse(
        status_code=409,
        content={"detail": "a concurrent change conflicted with this request; retry it"},
    )
