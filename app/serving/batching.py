"""Dynamic batching: concurrent requests for one model run as one onnxruntime call.

In the spirit of Triton's ``max_queue_delay_microseconds`` and BentoML's adaptive
batching. Requests wait in a *lane*, one per (model, num_samples, seed); a lane's
drain task collects requests until

    rows >= max_batch_size   or   the oldest waiting request has waited max_queue_delay,

concatenates their rows, runs the model once in a worker thread (onnxruntime releases
the GIL, so the event loop keeps serving) and hands every request its own slice of each
output. While a batch runs, new requests queue in the lane and form the next batch, so
under load batches grow by themselves and the delay is paid only when traffic is light.

Why only equal (num_samples, seed) are merged: the graph draws one noise matrix
eps (S x (K + R)) per call, a pure function of (seed, S), shared by every row, and each
row's outputs depend on its own input and eps only:

    out_b = g(x_b, eps(seed, S))        (no term mixes rows)

so a seeded request's rows come out the same whatever they are batched with
(tests/app/test_serving.py checks it). Unseeded requests merged into one call share one
fresh draw, exactly as the rows of one request do: every row's estimate is unbiased, but
two identical inputs in the same batch get the same answer. A client that averages
repeated calls to shrink the MC error should send them one after another or with
distinct seeds.

A request bigger than max_batch_size runs alone, never split (a split would give its
rows different draws).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from app.serving.metrics import BATCH_REQUESTS, BATCH_ROWS, INFERENCE_LATENCY, QUEUE_DEPTH
from app.serving.onnx_model import OnnxModel

Outputs = dict[str, np.ndarray]
# (id of the event loop, model id, id of the model object, num_samples, seed)
LaneKey = tuple[int, str, int, int, int | None]


@dataclass
class _Waiting:
    inputs: np.ndarray
    future: asyncio.Future[Outputs]
    arrived: float  # loop.time()


@dataclass
class _Lane:
    """Requests for one (model, num_samples, seed), oldest first."""

    pending: deque[_Waiting] = field(default_factory=deque)
    rows: int = 0
    full: asyncio.Future[None] | None = None  # set while the drain task waits for rows
    running: list[_Waiting] = field(default_factory=list)  # the batch in onnxruntime now
    task: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference


def run_timed(
    model: OnnxModel, model_id: str, x: np.ndarray, num_samples: int, seed: int | None
) -> Outputs:
    """One onnxruntime call (in a worker thread), timed for /metrics."""
    start = time.perf_counter()
    outputs = model.run(x, num_samples=num_samples, seed=seed)
    INFERENCE_LATENCY.labels(model_id).observe(time.perf_counter() - start)
    BATCH_ROWS.labels(model_id).observe(len(x))
    return outputs


def split_rows(outputs: Outputs, sizes: list[int]) -> list[Outputs]:
    """Cut every per-row output (leading axis = batch) back into the requests' slices."""
    total = sum(sizes)
    bounds = np.cumsum([0, *sizes])
    return [
        {
            name: value[start:stop]
            if getattr(value, "ndim", 0) and value.shape[0] == total
            else value
            for name, value in outputs.items()
        }
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


class DynamicBatcher:
    """``await batcher.run(...)`` = ``model.run(...)`` for one request's rows, batched."""

    def __init__(self, executor: Executor, max_batch_size: int, max_queue_delay_ms: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(0.0, max_queue_delay_ms) / 1000
        self._lanes: dict[LaneKey, _Lane] = {}

    async def run(
        self, model: OnnxModel, model_id: str, x: np.ndarray, num_samples: int, seed: int | None
    ) -> Outputs:
        loop = asyncio.get_running_loop()
        # The loop is part of the key: lanes hold futures bound to the loop they serve.
        key: LaneKey = (id(loop), model_id, id(model), num_samples, seed)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.task = loop.create_task(self._drain(key, lane, model, model_id, num_samples, seed))
        waiting = _Waiting(x, loop.create_future(), loop.time())
        lane.pending.append(waiting)
        lane.rows += len(x)
        if lane.full is not None and lane.rows >= self.max_batch_size and not lane.full.done():
            lane.full.set_result(None)
        QUEUE_DEPTH.labels(model_id).inc()
        return await waiting.future

    async def _drain(
        self,
        key: LaneKey,
        lane: _Lane,
        model: OnnxModel,
        model_id: str,
        num_samples: int,
        seed: int | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.pending:
                await self._fill(lane, loop)
                batch = self._take(lane)
                QUEUE_DEPTH.labels(model_id).dec(len(batch))
                BATCH_REQUESTS.labels(model_id).observe(len(batch))
                live = lane.running = [w for w in batch if not w.future.done()]  # skip cancelled
                if not live:
                    continue
                x = live[0].inputs if len(live) == 1 else np.concatenate([w.inputs for w in live])
                try:
                    outputs = await loop.run_in_executor(
                        self.executor, run_timed, model, model_id, x, num_samples, seed
                    )
                except Exception as exc:
                    for w in live:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                for w, part in zip(
                    live, split_rows(outputs, [len(w.inputs) for w in live]), strict=True
                ):
                    if not w.future.done():
                        w.future.set_result(part)
        finally:
            # Runs without an await after the last `while` check: no request can have
            # joined this lane in between, so none is stranded.
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            QUEUE_DEPTH.labels(model_id).dec(len(lane.pending))
            for w in [*lane.running, *lane.pending]:  # left only when the loop shuts down
                if not w.future.done():
                    w.future.cancel()

    async def _fill(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the lane holds a full batch or its oldest request's delay is up.

        One timer per batch, woken early only when the batch fills: arrivals in between
        cost nothing here (no wake-up per request)."""
        remaining = lane.pending[0].arrived + self.max_queue_delay_s - loop.time()
        if lane.rows >= self.max_batch_size or remaining <= 0:
            return
        lane.full = loop.create_future()
        timer = loop.call_later(remaining, _resolve, lane.full)
        try:
            await lane.full
        finally:
            timer.cancel()
            lane.full = None

    def _take(self, lane: _Lane) -> list[_Waiting]:
        """The oldest requests whose rows fit in max_batch_size (at least one)."""
        batch = [lane.pending.popleft()]
        rows = len(batch[0].inputs)
        while lane.pending and rows + len(lane.pending[0].inputs) <= self.max_batch_size:
            rows += len(lane.pending[0].inputs)
            batch.append(lane.pending.popleft())
        lane.rows -= rows
        return batch


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
