"""The serving runtime of one API app: model lookups, session cache, inference threads,
batcher.

``runtime.predict(...)`` is what the predict route awaits: it never blocks the event
loop (loading a session and every onnxruntime call run in threads). With
``settings.batching`` off each request is its own onnxruntime call.
"""

from __future__ import annotations

import asyncio
import gc
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
        # Made on the first model request, when the app's long-lived objects (FastAPI,
        # pydantic, SQLAlchemy, onnxruntime bindings) exist: move them out of the
        # collector's reach so full collections stop walking them (measured: p99 of
        # /predict under load roughly halved, bench/serve_load.py).
        gc.freeze()
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
