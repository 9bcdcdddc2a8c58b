"""Model id or alias → (model id, ONNX sha256, file path), with a short-lived cache.

A store query per prediction (a session, a SELECT, a commit: about a millisecond of
Python on a small CPU) would cost more than the onnxruntime call of a small model, so
an API process reuses a lookup for ``ttl_s`` seconds (settings.model_lookup_ttl_s).
Writes made through this process (alias moved, model deleted) clear the cache at once;
another API process sees them within ``ttl_s``. A request that resolved an alias just
before it moved is served by the model it resolved, which stays registered, so moving
an alias under load drops nothing.

While the store is unreachable a refresh fails: the expired entry is kept and served
(and retried after another ``ttl_s``), so models this process already knows keep being
served through a store outage; an unknown reference raises (a 503 to the client).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import ModelStore

log = logging.getLogger("hetserve.serving")


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    onnx_sha256: str
    path: Path


class ModelDirectory:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.ttl_s = settings.model_lookup_ttl_s
        self.artifacts = ArtifactStore(settings.data_dir)
        self._entries: dict[str, tuple[float, ServedModel]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def cached(self, ref: str) -> ServedModel | None:
        """A cached lookup, or None: then the caller runs ``lookup`` (never queries).

        When an entry expires, the first caller gets None and refreshes it; callers
        arriving meanwhile keep the expired entry instead of all querying at once."""
        with self._lock:
            entry = self._entries.get(ref)
            if entry is None:
                return None
            if time.monotonic() - entry[0] <= self.ttl_s or ref in self._refreshing:
                return entry[1]
            self._refreshing.add(ref)
            return None

    def lookup(self, ref: str) -> ServedModel | None:
        """Query the store (blocking); None when ``ref`` is neither a model id nor an alias."""
        try:
            try:
                with session_scope(self.settings) as session:
                    model = ModelStore(session).resolve(ref)
                    served = None
                    if model is not None:
                        served = ServedModel(
                            model.id, model.onnx_sha256, self.artifacts.resolve(model.onnx_path)
                        )
            except Exception as exc:
                with self._lock:
                    entry = self._entries.get(ref)
                    if entry is None:
                        raise
                    # Keep serving what we knew; ask the store again after another ttl.
                    self._entries[ref] = (time.monotonic(), entry[1])
                log.warning(
                    "model lookup of %r failed (%s); serving the cached entry",
                    ref,
                    type(exc).__name__,
                )
                return entry[1]
            with self._lock:
                if served is None:
                    self._entries.pop(ref, None)  # deleted elsewhere: forget it
                elif self.ttl_s > 0:
                    self._entries[ref] = (time.monotonic(), served)
            return served
        finally:
            # Without this an entry refreshed once would be served stale forever.
            with self._lock:
                self._refreshing.discard(ref)

    def invalidate(self) -> None:
        with self._lock:
            self._entries.clear()
            self._refreshing.clear()
