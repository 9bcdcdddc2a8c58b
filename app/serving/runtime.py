"""The serving runtime of one API process: model lookups, session cache, inference
threads, batcher.

The app's lifespan (app/main.py) builds one and keeps it in ``app.state.runtime``;
routes get it through ``app.deps.RuntimeDep``. ``runtime.predict(...)`` is what the
predict route awaits: it never blocks the event loop (loading a session and every
onnxruntime call run in threads). With ``settings.batching`` off each request is its own
onnxruntime call. A per-batch step ``then(model, outputs, num_samples)`` runs in the same
thread right after the call, once for the whole batch (predict turns the arrays into
JSON-ready rows there); requests batch only with requests of the same step.

onnxruntime threads. ``HETSERVE_ORT_INTRA_OP_THREADS=0`` (the default) picks them from
the machine: each of the P API processes gets an equal share of the C cores, less one
for its event loop, at least one:

    intra_op_threads = max(1, C // P - 1)    (Settings.resolved_ort_intra_op_threads)

onnxruntime's own default (one thread per core, spin-waiting between ops) has every
process's pool spin on the cores the event loops need: on 2 cores and 2 processes it
served fewer requests at a higher p99 than one thread per call (docs/benchmarks.md, "Serving under load").

Fork safety. Threads do not survive ``fork``: a child that inherited a runtime would
queue onnxruntime calls on an executor whose threads exist only in the parent, and could
inherit a lock held by one of them. After a fork every live runtime in the child starts
afresh (new executor, batcher, lookup cache and session cache); the models the parent
had loaded are left to OnnxModel's own fork handling (app/serving/onnx_model.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.serving.batching import DynamicBatcher, Outputs
from app.serving.directory import ModelDirectory
from app.serving.metrics import BATCH_ROWS, INFERENCE_LATENCY, child
from app.serving.onnx_model import OnnxModel
from app.serving.sessions import ModelKey, SessionCache
from app.settings import Settings

# A per-batch step after the onnxruntime call: (model, outputs, num_samples) -> outputs.
Then = Callable[[OnnxModel, Outputs, int], Outputs]


def infer(
    model: OnnxModel,
    model_id: str,
    num_samples: int,
    seed: int | None,
    then: Then | None,
    x: np.ndarray,
) -> Outputs:
    """One onnxruntime call (in a worker thread), timed for /metrics, then ``then``."""
    start = time.perf_counter()
    outputs: Outputs = model.run(x, num_samples=num_samples, seed=seed)
    child(INFERENCE_LATENCY, model_id).observe(time.perf_counter() - start)
    child(BATCH_ROWS, model_id).observe(len(x))
    return outputs if then is None else then(model, outputs, num_samples)


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
            settings.resolved_ort_intra_op_threads,
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
        self,
        model: OnnxModel,
        model_id: str,
        x: np.ndarray,
        num_samples: int,
        seed: int | None,
        then: Then | None = None,
    ) -> Outputs:
        """The graph's outputs for the rows x (``then`` applied), batched with other
        requests for the same model, S, seed and ``then`` when batching is on."""
        fn = functools.partial(infer, model, model_id, num_samples, seed, then)
        if self.batcher is not None:
            key = (model_id, id(model), num_samples, seed, then)
            return await self.batcher.run(key, model_id, fn, x)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, x)


_live_runtimes: weakref.WeakSet[ServingRuntime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_live_runtimes):
        runtime._start()  # the parent's executor, batcher and locks stay behind unused


os.register_at_fork(after_in_child=_after_fork_in_child)
