"""Bearer API keys for every /v1 route: where they come from and how one is checked.

The FastAPI dependency that applies the check is ``app.deps.require_api_key``; the
``/v1`` router in app/main.py attaches it once for every route under it.

Keys come from ``HETSERVE_API_KEYS`` (comma separated). When it is unset, one key is
generated on first start, stored in ``data_dir/api_key`` with mode 0600 and printed;
later starts read it back.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from pathlib import Path

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import Settings

KEY_FILE = "api_key"

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def load_or_create_keys(settings: Settings) -> list[str]:
    if settings.api_keys:
        keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
        if not keys:
            raise ValueError("HETSERVE_API_KEYS is set but holds no key")
        return keys
    path = Path(settings.data_dir) / KEY_FILE
    if path.exists():
        return [path.read_text().strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    try:
        # O_EXCL: two processes starting at once must not both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return [path.read_text().strip()]
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    print(f"hetserve: generated API key (stored in {path}): {key}", file=sys.stderr, flush=True)
    return [key]


def verify_api_key(keys: list[str], credentials: HTTPAuthorizationCredentials | None) -> str:
    """The key if it is one of ``keys``; otherwise 401 with ``WWW-Authenticate: Bearer``."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials.encode()
    # Compare against every key in constant time; no early exit on a match.
    valid = [hmac.compare_digest(given, k.encode()) for k in keys]
    if not any(valid):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials
