"""The serving runtime of one API process: model lookups, session cache, inference
threads, batcher.

The app's lifespan (app/main.py) builds one and keeps it in ``app.state.runtime``;
routes get it through ``app.deps.RuntimeDep``. ``runtime.predict(...)`` is what the
predict route awaits: it never blocks the event loop (loading a session and every
onnxruntime call run in threads). With ``settings.batching`` off each request is its own
onnxruntime call.

Fork safety. Threads do not survive ``fork``: a child that inherited a runtime would
queue onnxruntime calls on an executor whose threads exist only in the parent, and could
inherit a lock held by one of them. After a fork every live runtime in the child starts
afresh (new executor, batcher, lookup cache and session cache); the models the parent
had loaded are left to OnnxModel's own fork handling (app/serving/onnx_model.py).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.serving.batching import DynamicBatcher, Outputs, run_timed
from app.serving.directory import ModelDirectory
from app.serving.onnx_model import OnnxModel
from app.serving.sessions import ModelKey, SessionCache
from app.settings import Settings


class ServingRuntime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._start()
        _live_runtimes.add(self)

    def _start(self) -> None:
        settings = self.settings
        self.directory = ModelDirectory(settings)
        self.sessions = SessionCache(
            settings.session_cache_size,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
        )
        self.executor = ThreadPoolExecutor(
            max_workers=max(1, settings.inference_threads), thread_name_prefix="onnxruntime"
        )
        self.batcher = (
            DynamicBatcher(self.executor, settings.max_batch_size, settings.max_queue_delay_ms)
            if settings.batching
            else None
        )

    def close(self) -> None:
        """Stop the inference threads once they finish what they run (app shutdown)."""
        _live_runtimes.discard(self)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def model(self, key: ModelKey, path: Path) -> OnnxModel:
        """The loaded model; a miss loads it in a thread."""
        model = self.sessions.peek(key)
        if model is None:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self.executor, self.sessions.get, key, path)
        return model

    async def predict(
        self, model: OnnxModel, model_id: str, x: np.ndarray, num_samples: int, seed: int | None
    ) -> Outputs:
        if self.batcher is not None:
            return await self.batcher.run(model, model_id, x, num_samples, seed)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, run_timed, model, model_id, x, num_samples, seed
        )


_live_runtimes: weakref.WeakSet[ServingRuntime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_live_runtimes):
        runtime._start()  # the parent's executor, batcher and locks stay behind unused


os.register_at_fork(after_in_child=_after_fork_in_child)
