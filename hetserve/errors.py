"""Exceptions of the hetserve client: every failed call raises one, never returns."""

from __future__ import annotations

from typing import Any


class HetserveError(Exception):
    """Base class of everything the client raises."""


class ConnectionFailed(HetserveError):
    """The service could not be reached (refused, DNS, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url, self.reason = url, reason


class ApiError(HetserveError):
    """The API answered with an error status.

    ``status_code`` is the HTTP status, ``detail`` the API's ``detail`` (a string, or for
    request validation errors a list of ``{"loc", "msg", "type"}`` dicts).
    """

    def __init__(self, status_code: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status_code, self.detail, self.method, self.path = status_code, detail, method, path
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}HTTP {status_code}: {format_detail(detail)}")


class AuthenticationError(ApiError):
    """401: the API key is missing or not one of the service's keys."""


class PermissionDenied(ApiError):
    """403: the request is not allowed (e.g. a dataset path outside the allowed roots)."""


class NotFoundError(ApiError):
    """404: no such dataset, job, model or alias."""


class ConflictError(ApiError):
    """409: the resource is in use or in the wrong state (a dataset jobs use, an ended job)."""


class PayloadTooLarge(ApiError):
    """413: the upload or request body is over the service's limit."""


class UnprocessableError(ApiError):
    """422: the request was understood but is invalid; ``detail`` names the field."""


class ServiceUnavailable(ApiError):
    """503: the store or the broker is unavailable; retry later."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    422: UnprocessableError,
    503: ServiceUnavailable,
}


def error_for(status_code: int, detail: Any, method: str = "", path: str = "") -> ApiError:
    """The ApiError subclass for ``status_code`` (ApiError itself for the others)."""
    return _BY_STATUS.get(status_code, ApiError)(status_code, detail, method, path)


def format_detail(detail: Any) -> str:
    """A validation error list as ``body.inputs.3: msg; ...``; anything else as text."""
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        parts = []
        for error in detail:
            loc = ".".join(str(p) for p in error.get("loc", []))
            parts.append(f"{loc}: {error['msg']}" if loc else str(error["msg"]))
        return "; ".join(parts)
    return str(detail)
