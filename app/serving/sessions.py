"""An LRU cache of loaded ONNX models (onnxruntime sessions), one per (model id, file hash).

Creating a session parses the graph and plans memory (tens to hundreds of ms), so a
model is loaded once per process and reused; the least recently used one is dropped
when more than ``capacity`` are held. A dropped model that is still running a batch
finishes it: the cache only forgets its reference.

Keyed by the ONNX file's sha256 as well as the model id, so a file that changed under
an id (it never should: artifacts are content addressed) is never served stale.

Integrity: before a file is loaded (and before the models router hands it out) its
sha256 is compared with the one the store recorded (``models.onnx_sha256``). A mismatch
raises ``ModelIntegrityError`` (a 409 ``{"detail": "model file failed its integrity
check"}``), logs an ERROR line with the model id, and is listed in ``failed`` until a
later check of that model passes (``/readyz`` reports the list). A file is hashed once
per (path, mtime, size, inode): a model already loaded is served from memory without
re-reading its file.
Each load runs one small prediction (warm-up) so the first client request does not
pay for onnxruntime's lazy initialisation. Fresh random draws per process need nothing
here: app/serving/onnx_model.py feeds each call a seed from os.urandom.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from starlette.exceptions import HTTPException

from app.artifacts import sha256_file
from app.serving.metrics import SESSIONS_LOADED
from app.serving.onnx_model import OnnxModel

ModelKey = tuple[str, str]  # (model id, onnx sha256)

log = logging.getLogger("hetserve.serving")

INTEGRITY_DETAIL = "model file failed its integrity check"


class ModelIntegrityError(HTTPException):
    """The file's sha256 is not the one the store recorded: a 409 to the client."""

    def __init__(self, model_id: str):
        super().__init__(409, INTEGRITY_DETAIL)
        self.model_id = model_id


class FileHashes:
    """sha256 of files, computed once per (path, mtime, size, inode)."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        digest = sha256_file(path)
        with self._lock:
            self._known[path] = (signature, digest)
        return digest


WARMUP_ROWS = 2
WARMUP_SAMPLES = 8


class SessionCache:
    def __init__(self, capacity: int, intra_op_threads: int = 0, inter_op_threads: int = 1):
        if capacity < 1:
            raise ValueError(f"session cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._models: OrderedDict[ModelKey, OnnxModel] = OrderedDict()
        self._lock = threading.Lock()  # guards _models; held only for dict operations
        self._load_lock = threading.Lock()  # one load at a time: no model is loaded twice
        self.hashes = FileHashes()
        self.failed: dict[str, str] = {}  # model id -> path, of files that failed the check

    def verify(self, model_id: str, expected_sha256: str, path: Path) -> None:
        """Raise ``ModelIntegrityError`` unless ``path`` hashes to ``expected_sha256``
        (a missing file passes here: the caller reports it as missing). Blocking."""
        try:
            actual = self.hashes.sha256(path)
        except FileNotFoundError:
            return
        if actual != expected_sha256:
            self.failed[model_id] = str(path)
            log.error(
                "model %s: file %s failed its integrity check (sha256 %s, recorded %s)",
                model_id,
                path,
                actual,
                expected_sha256,
                extra={"model_id": model_id},
            )
            raise ModelIntegrityError(model_id)
        self.failed.pop(model_id, None)

    def peek(self, key: ModelKey) -> OnnxModel | None:
        """The cached model, marked most recently used, or None (never loads)."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def get(self, key: ModelKey, path: Path) -> OnnxModel:
        """The cached model, loading (and warming up) ``path`` on a miss. Blocking."""
        model = self.peek(key)
        if model is not None:
            return model
        with self._load_lock:
            model = self.peek(key)  # another thread may have loaded it while we waited
            if model is not None:
                return model
            self.verify(key[0], key[1], path)
            model = OnnxModel(
                path, intra_op_threads=self.intra_op_threads, inter_op_threads=self.inter_op_threads
            )
            warm_up(model)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                SESSIONS_LOADED.set(len(self._models))
        return model

    def forget(self, model_id: str) -> None:
        """Drop every cached session of a model (after it was deleted)."""
        with self._lock:
            for key in [k for k in self._models if k[0] == model_id]:
                del self._models[key]
            SESSIONS_LOADED.set(len(self._models))

    def __len__(self) -> int:
        return len(self._models)


def warm_up(model: OnnxModel) -> None:
    """One small run through the whole graph (allocations, kernel selection)."""
    shape = [WARMUP_ROWS, *model.input_shape]
    model.run(np.zeros(shape, np.float32), num_samples=WARMUP_SAMPLES, seed=0)
