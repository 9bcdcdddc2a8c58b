"""``RequestGate``: the pure ASGI middleware in front of every route, run before any
route (or Starlette's form parser) reads a byte of the body.

For each HTTP request, in order:

1. ``/v1`` and ``/v2/models`` (the Open Inference Protocol's model routes; its health
   routes stay open): the bearer key is checked: a valid one passes; otherwise 429
   (``Retry-After``) while the client address is throttled for wrong keys, else 401 (a
   wrong key counts against the address, a missing one does not); a ``predict`` key
   asking for anything else gets 403.
   The key is left in ``request.state.api_key`` for ``app.deps.require_api_key``.
   ``/metrics`` takes an optional key: with a valid one it lists per-model series.
2. The body limit of the route (``body_limit``): a declared ``Content-Length`` over it is
   a 413 before the body is read; a chunked (or lying) body is counted as it streams and
   cut off with 413 at the limit, so no more than the limit is ever buffered or spooled.
   The early answers close the connection: the server does not drain the unread body.
3. Writes under ``/v1`` (POST, PUT, PATCH, DELETE, except a model's serving POSTs such as
   predict) leave an audit line on logger ``hetserve.audit``: the key's fingerprint,
   method, route template (the raw path when refused before routing), the ids in the
   path or the created id, and the status; refused writes (403, 404, 409...) included.
"""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import FailureThrottle, predict_scope_allows
from app.auth import Scope as KeyScope
from app.settings import Settings

audit_log = logging.getLogger("hetserve.audit")

# Multipart framing (boundaries, part headers, the small form fields) on top of the file.
MULTIPART_SLACK_BYTES = 64 * 1024
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDIT_CAPTURE_BYTES = 64 * 1024  # a created resource's JSON is read for its id up to this


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


def is_serving_post(method: str, path: str) -> bool:
    """``POST /v1/models/{model}/<action>`` (predict) or ``POST /v2/models/{model}/infer``:
    reads, even though a POST."""
    parts = path.strip("/").split("/")
    return (
        method == "POST" and len(parts) == 4 and parts[0] in ("v1", "v2") and parts[1] == "models"
    )


def needs_key(path: str) -> bool:
    return path in ("/v1", "/v2/models") or path.startswith(("/v1/", "/v2/models/"))


def body_limit(settings: Settings, method: str, path: str, content_type: str) -> tuple[int, int]:
    """(bytes the route may receive, the limit its 413 names): what the route needs. The
    upload cap only for a multipart dataset upload (a JSON registration by reference gets
    the JSON cap), the request cap for serving POSTs, the JSON cap for the rest."""
    media_type = content_type.split(";")[0].strip().lower()
    if (
        method == "POST"
        and path.rstrip("/") == "/v1/datasets"
        and media_type == "multipart/form-data"
    ):
        return settings.max_upload_bytes + MULTIPART_SLACK_BYTES, settings.max_upload_bytes
    if is_serving_post(method, path):
        return settings.max_request_bytes, settings.max_request_bytes
    return settings.max_json_body_bytes, settings.max_json_body_bytes


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def error(
    status: int, detail: str, headers: dict[str, str] | None = None, path: str = ""
) -> JSONResponse:
    # Connection: close: answered before the body was read, so the server closes the
    # connection instead of reading (or spooling) whatever the client still sends.
    # The Open Inference Protocol (/v2) names the message "error".
    key = "error" if path.startswith("/v2/") else "detail"
    return JSONResponse({key: detail}, status, headers={**(headers or {}), "Connection": "close"})


class RequestGate:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app_state = scope["app"].state
        settings: Settings = app_state.settings
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})

        key = None
        if needs_key(path):
            refusal, key = self.authenticate(app_state, scope, headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            if key.scope is KeyScope.PREDICT and not predict_scope_allows(method, path):
                await error(403, "this API key may only predict and read models", path=path)(
                    scope, receive, send
                )
                if method in WRITE_METHODS:
                    audit(scope, key.fingerprint, 403, b"")
                return
            state["api_key"] = key
        elif path == "/metrics" and (token := bearer_token(headers)):
            state["api_key"] = app_state.key_ring.match(token)

        limit, named_limit = body_limit(settings, method, path, headers.get("content-type", ""))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error(413, f"request body exceeds the limit of {named_limit} bytes", path=path)(
                scope, receive, send
            )
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(named_limit)
            return message

        audited = key is not None and method in WRITE_METHODS and not is_serving_post(method, path)
        status = 500
        started = False
        captured: list[bytes] = []

        async def watched_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
            elif audited and message["type"] == "http.response.body":
                if sum(map(len, captured)) < AUDIT_CAPTURE_BYTES:
                    captured.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge as exc:  # escaped the app's handlers (read outside a route)
            if started:
                raise
            status = 413
            await error(413, exc.detail, path=path)(scope, receive, send)
        finally:
            if audited and key is not None:  # audited implies a key
                audit(scope, key.fingerprint, status, b"".join(captured))

    def authenticate(self, app_state, scope: Scope, headers: Headers):
        """(None, key) when the key is valid, else (a refusal response, None)."""
        address = (scope.get("client") or ("unknown",))[0]
        path = scope["path"]
        throttle: FailureThrottle = app_state.auth_throttle
        token = bearer_token(headers)
        key = None if token is None else app_state.key_ring.match(token)
        if key is not None:  # a valid key is served even from a throttled address
            return None, key
        wait = throttle.retry_after(address)
        if wait is not None:
            return error(
                429,
                "too many failed authentications; retry later",
                {"Retry-After": str(wait)},
                path,
            ), None
        if token is None:
            return error(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
                path,
            ), None
        throttle.failed(address)
        return error(401, "invalid API key", {"WWW-Authenticate": "Bearer"}, path), None


def audit(scope: Scope, who: str, status: int, body: bytes) -> None:
    route = scope.get("route")
    ids = {k: str(v) for k, v in (scope.get("path_params") or {}).items()}
    if 200 <= status < 300 and scope["method"] == "POST" and body:
        try:
            created = json.loads(body)
        except ValueError:
            created = None
        if isinstance(created, dict) and isinstance(created.get("id"), str):
            ids["created_id"] = created["id"]
    audit_log.info(
        "audit %s %s by %s: %d",
        scope["method"],
        getattr(route, "path", scope["path"]),
        who,
        status,
        extra={
            "who": who,
            "method": scope["method"],
            "route": getattr(route, "path", None),
            "ids": ids,
            "status": status,
        },
    )


def install(app, settings: Settings) -> None:
    """The gate and its throttle; the app's lifespan puts the ``KeyRing`` (``key_ring``)
    on ``app.state`` (reading keys, maybe generating one, is start-up work)."""
    app.state.auth_throttle = FailureThrottle(
        settings.auth_failure_limit, settings.auth_failure_window_s
    )
    app.add_middleware(RequestGate)
