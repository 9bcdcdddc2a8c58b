"""Bearer API keys for every /v1 route: where they come from, how one is checked, what
it may do.

The check runs in ``app.gate.RequestGate`` (a pure ASGI middleware) before any route
reads a byte of the body; ``app.deps.require_api_key`` hands the result to a route.

Keys come from ``HETSERVE_API_KEYS`` (comma separated) and from the file
``HETSERVE_API_KEYS_FILE`` (the same syntax, also one a line, ``#`` comments), which is
re-read whenever its modification time or size changes: rotate keys without a restart.
A key written ``key:predict`` may only predict and read models (``Scope.PREDICT``);
any other key may do everything. When neither is set, one key is generated on first
start and stored in ``data_dir/api_key`` with mode 0600; later starts read it back.

A key is never logged: log lines name it by ``fingerprint(key)``, the first 8 hex digits
of its sha256.

Failed attempts (a key presented but wrong) are throttled per client address: after
``auth_failure_limit`` within ``auth_failure_window_s`` a request from the address
without a valid key gets 429 with ``Retry-After`` until the window has passed. A valid
key is served all the same, so clients sharing an address (NAT, a proxy, one host) with
a misconfigured one are not locked out. What this costs: a guess that hits is answered
even from a throttled address, so the throttle bounds the log and CPU a flood of wrong
keys costs, not the guessing of a key; that rests on the keys' strength (a generated key
is 256 random bits: ``generate_key``). The count lives in the memory of each API
process (``--workers N`` multiplies the allowance by N; a restart forgets it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fastapi.security import HTTPBearer

from app.settings import Settings

log = logging.getLogger("hetserve.auth")

KEY_FILE = "api_key"

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


class Scope(StrEnum):
    FULL = "full"
    PREDICT = "predict"


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    scope: Scope
    fingerprint: str


def fingerprint(key: str | bytes) -> str:
    """What logs call a key: the first 8 hex digits of its sha256."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:8]


def parse_keys(text: str, source: str) -> list[ApiKey]:
    """``key1,key2:predict`` or one a line (``#`` starts a comment line)."""
    keys = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            secret, _, scope = item.partition(":")
            try:
                parsed_scope = Scope(scope or "full")
            except ValueError:
                raise ValueError(
                    f"{source}: key {fingerprint(secret)} has an unknown scope {scope!r}"
                    " (use 'predict' or none)"
                ) from None
            keys.append(ApiKey(secret.encode(), parsed_scope, fingerprint(secret)))
    return keys


def generated_key(settings: Settings) -> str:
    """The key in ``data_dir/api_key``, generated (and stored, mode 0600) on first use."""
    path = Path(settings.data_dir) / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    try:
        # O_EXCL: two processes starting at once must not both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    # The key itself stays out of the logs: read it from the file.
    print(
        f"hetserve: generated API key {fingerprint(key)} (fingerprint), stored in {path}",
        file=sys.stderr,
        flush=True,
    )
    return key


class KeyRing:
    """The valid keys: the environment's, the keys file's (re-read when it changes), or
    the generated one."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.file = settings.api_keys_file
        self._lock = threading.Lock()
        self._fixed = parse_keys(settings.api_keys or "", "HETSERVE_API_KEYS")
        if settings.api_keys is not None and not self._fixed and self.file is None:
            raise ValueError("HETSERVE_API_KEYS is set but holds no key")
        self._from_file: list[ApiKey] = []
        self._signature: tuple[int, int, int] | None = None
        if self.file is not None:
            self._from_file = self._read_file()  # a broken file at start is fatal
            self._signature = self._file_signature()
        if not self._fixed and not self._from_file:
            if self.file is not None:
                raise ValueError(f"HETSERVE_API_KEYS_FILE {self.file} holds no key")
            self._fixed = parse_keys(generated_key(settings), KEY_FILE)

    def _file_signature(self) -> tuple[int, int, int] | None:
        assert self.file is not None  # called only when a key file is configured
        try:
            st = os.stat(self.file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self) -> list[ApiKey]:
        assert self.file is not None  # called only when a key file is configured
        return parse_keys(Path(self.file).read_text(), str(self.file))

    def keys(self) -> list[ApiKey]:
        if self.file is not None:
            signature = self._file_signature()
            if signature != self._signature:
                with self._lock:
                    if signature != self._signature:
                        self._reload(signature)
        return self._fixed + self._from_file

    def _reload(self, signature: tuple[int, int, int] | None) -> None:
        try:
            keys = self._read_file()
        except (OSError, ValueError) as exc:
            # Keep the keys we have: a half-written or vanished file must not lock
            # everyone out (or let everyone in).
            log.error("keys file %s unreadable, keeping the previous keys: %s", self.file, exc)
            self._signature = signature
            return
        if not keys and not self._fixed:
            log.error("keys file %s holds no key, keeping the previous keys", self.file)
        else:
            self._from_file = keys
            log.info(
                "keys file %s re-read: %d keys", self.file, len(keys), extra={"keys": len(keys)}
            )
        self._signature = signature

    def match(self, given: str) -> ApiKey | None:
        """The key equal to ``given``, compared in constant time against every key."""
        raw = given.encode()
        found = None
        for key in self.keys():
            if hmac.compare_digest(raw, key.secret) and found is None:
                found = key
        return found


class FailureThrottle:
    """Wrong keys per client address within a sliding window (memory of one process)."""

    MAX_ADDRESSES = 100_000

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is not None:
            while times and now - times[0] > self.window_s:
                times.popleft()
            if not times:
                del self._failures[address]
                return None
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(address, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1, int(self.window_s - (now - times[0])) + 1)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.MAX_ADDRESSES:
                for old in list(self._failures):
                    self._recent(old, now)
            times = self._failures.setdefault(address, deque())
            times.append(now)
            if len(times) > self.limit:
                times.popleft()


def predict_scope_allows(method: str, path: str) -> bool:
    """What a ``predict`` key may do: read the model registry and aliases, and POST a
    serving action on a model (``/v1/models/{model}/predict``)."""
    parts = path.strip("/").split("/")
    if method in ("GET", "HEAD"):
        return len(parts) >= 2 and parts[1] in ("models", "aliases")
    return method == "POST" and len(parts) == 4 and parts[1] == "models"


def generate_key() -> str:
    """43 URL-safe characters (256 bits) that never start with "-": such a key reads as an
    option on a command line (``--key -abc``)."""
    while True:
        key = secrets.token_urlsafe(32)
        if not key.startswith("-"):
            return key


def load_or_create_keys(settings: Settings) -> list[str]:
    """Every valid key as text (the CLI shows the first to its user)."""
    return [key.secret.decode() for key in KeyRing(settings).keys()]
