"""HTTP routers, one per resource, and the response docs several of them share.

- health.py: ``/healthz``, ``/readyz``        - metrics.py: ``/metrics``
- datasets.py: ``/v1/datasets``               - jobs.py: ``/v1/jobs``
- models.py: the model registry               - aliases.py: ``/v1/aliases``
- predict.py: ``POST /v1/models/{model_id}/predict``, the hot path
- noise.py: ``/v1/models/{model_id}/noise`` and ``/label-issues``
- kserve.py: ``/v1/models/{model_id}/triton`` (a Triton model repository) and the Open
  Inference Protocol (``/v2``) on the same runtime
- ui.py: the dashboard ``/ui``, ``/static``, and ``/docs``, ``/redoc`` from vendored files

Their dependencies (settings, database session, runtime, API key) are the aliases in
app/deps.py; app/main.py mounts every ``/v1`` router under the API key check (predict
requires it on its own router, mounted first).
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

# What FastAPI's ``responses=`` takes: status code (or "default") -> OpenAPI response object.
Responses = dict[int | str, dict[str, Any]]

AUTH_ERRORS: Responses = {401: {"description": "missing or invalid API key"}}
MODEL_NOT_FOUND: Responses = {404: {"description": "no model with that id or alias"}}
# A model file served for download is checked against its recorded sha256 first.
MODEL_FILE_CHANGED: Responses = {
    409: {"description": "the file does not match its recorded sha256"}
}
# FastAPI answers 400 when it cannot parse a body at all (JSON that is not UTF-8, a
# broken multipart form), before any route runs.
BODY_UNPARSEABLE: Responses = {
    400: {"description": "the body could not be parsed (JSON that is not UTF-8, a broken form)"}
}


def document_body_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with BODY_UNPARSEABLE among the responses of every operation that
    takes a body (one that documents its own 400 keeps it)."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                responses = operation.setdefault("responses", {})
                responses.setdefault("400", BODY_UNPARSEABLE[400])
    return openapi


def operation_id(route: APIRoute) -> str:
    """Stable operationIds for generated clients: "<tag>-<function name>", e.g. jobs-get_job."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name
