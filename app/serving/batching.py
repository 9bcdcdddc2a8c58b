"""Dynamic batching: concurrent requests for the same work run as one call.

    outputs = await batcher.run(key, label, fn, x)    # = fn(x), batched

In the spirit of Triton's ``max_queue_delay_microseconds`` and BentoML's adaptive
batching, and like BentoML's batching layer it knows nothing of the model: ``fn`` maps
rows ``x [N, ...]`` to a dict of outputs whose leading axis is N (arrays or lists), and
requests with equal ``key`` (work that may share one call of any of their ``fn``) are
batched; ``label`` names them in /metrics. The serving runtime (app/serving/runtime.py)
keys by (model, num_samples, seed, per-batch step). Requests wait in a *lane*, one per
key; a lane's drain task runs the waiting requests as one batch as soon as

    rows >= max_batch_size
    or the oldest waiting request arrived while the previous batch ran
    or waiting longer will not add a request: with gap the key's mean time between
       arrivals that join a waiting batch (an exponential average, alpha = 1/4, of those
       gaps, each capped at 2 D, D = max_queue_delay) and t_last the latest arrival, the
       batch closes at

           now                           if t_last + gap >= t_oldest + D  (none due in time)
           min(t_oldest + D, t_last + 2 gap)                              otherwise

       (the stream has paused when twice the usual gap passes with no arrival),

concatenates their rows, runs ``fn`` once in a worker thread (onnxruntime releases
the GIL, so the event loop keeps serving) and hands every request its own slice of each
output. Only gaps inside a forming batch count: the gap before a request that finds the
lane empty spans the lane's idle time, which for closed-loop clients is the batcher's own
doing (they send again only once answered), so counting it would make a lone client
wait for itself. A first request (nothing seen: gap = 2 D) runs at once, a lone request
waits at most two of the gaps seen inside batches, a steady stream fills batches up to
the delay, and a burst (closed-loop clients whose answers came back together) closes
about two gaps after its last request instead of waiting out D.
While a batch runs, new requests queue in the lane and form the next batch, which runs
as soon as the first is back, so under load batches grow by themselves. The estimate
outlives the lane (kept per key, the most recent ``MAX_TRACKED_KEYS``).

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
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.serving.metrics import BATCH_REQUESTS, QUEUE_DEPTH, child

# Per-row outputs: leading axis = the rows (numpy arrays or lists); anything else is
# handed whole to every request.
Outputs = dict[str, Any]
BatchFn = Callable[[np.ndarray], Outputs]
LaneKey = tuple[int, Hashable]  # (id of the event loop, the caller's key)

GAP_WEIGHT = 1 / 4  # alpha of the mean gap between arrivals
MAX_GAP_DELAYS = 2.0  # a gap counts for at most this many max_queue_delays
PAUSE_GAPS = 2.0  # this many mean gaps with no arrival: the stream has paused
MAX_TRACKED_KEYS = 1024  # arrival estimates kept (keys with a seed are many)


class Arrivals:
    """The mean gap between a key's arrivals that join a waiting batch:
    ``gap += alpha (min(t - t_last, 2 D) - gap)``, ``t_last`` = the latest arrival of any
    kind. The cap keeps one long wait from outweighing the traffic after it. Starts at
    2 D (none seen: nobody is expected) with ``last`` = -inf."""

    def __init__(self, max_delay_s: float):
        self.max_delay_s = max_delay_s
        self.gap = MAX_GAP_DELAYS * max_delay_s
        self.last = -math.inf

    def observe(self, now: float, joins_waiting: bool = True) -> None:
        if joins_waiting:
            gap = min(now - self.last, MAX_GAP_DELAYS * self.max_delay_s)
            self.gap += GAP_WEIGHT * (gap - self.gap)
        self.last = now


def closes_at(arrivals: Arrivals, oldest: float, now: float) -> float | None:
    """When a batch whose oldest request arrived at ``oldest`` should close: None for
    now, else the time to look again (the module docstring's rule, less the full-batch
    and arrived-during-a-run cases, which the caller checks)."""
    deadline = oldest + arrivals.max_delay_s
    if now >= deadline or arrivals.last + arrivals.gap >= deadline:
        return None
    wake = min(deadline, arrivals.last + PAUSE_GAPS * arrivals.gap)
    return None if wake <= now else wake


@dataclass
class _Waiting:
    inputs: np.ndarray
    future: asyncio.Future[Outputs]
    arrived: float  # loop.time()


@dataclass
class _Lane:
    """Requests of one key, oldest first."""

    arrivals: Arrivals  # the key's, shared with DynamicBatcher._arrivals
    pending: deque[_Waiting] = field(default_factory=deque)
    rows: int = 0
    full: asyncio.Future[None] | None = None  # set while the drain task waits for rows
    running: list[_Waiting] = field(default_factory=list)  # the batch in onnxruntime now
    ran_until: float = float("-inf")  # loop.time() when the last batch came back
    task: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference


def split_rows(outputs: Outputs, sizes: list[int]) -> list[Outputs]:
    """Cut every per-row output (leading axis = batch) back into the requests' slices."""
    total = sum(sizes)
    per_row = [
        name
        for name, value in outputs.items()
        if (
            value.ndim > 0 and len(value) == total
            if isinstance(value, np.ndarray)
            else isinstance(value, list) and len(value) == total
        )
    ]
    parts, start = [], 0
    for size in sizes:
        stop = start + size
        part = dict(outputs)
        for name in per_row:
            part[name] = outputs[name][start:stop]
        parts.append(part)
        start = stop
    return parts


class DynamicBatcher:
    """``await batcher.run(key, label, fn, x)`` = ``fn(x)`` for one request's rows, batched."""

    def __init__(self, executor: Executor, max_batch_size: int, max_queue_delay_ms: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(0.0, max_queue_delay_ms) / 1000
        self._lanes: dict[LaneKey, _Lane] = {}
        self._arrivals: OrderedDict[LaneKey, Arrivals] = OrderedDict()

    async def run(self, key: Hashable, label: str, fn: BatchFn, x: np.ndarray) -> Outputs:
        """``fn(x)``, run in one call with the other waiting requests of equal ``key``
        (the first one's ``fn`` serves the batch); ``label`` names the lane in /metrics."""
        loop = asyncio.get_running_loop()
        # The loop is part of the key: lanes hold futures bound to the loop they serve.
        lane_key: LaneKey = (id(loop), key)
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = _Lane(arrivals=self._arrivals_of(lane_key))
            lane.task = loop.create_task(self._drain(lane_key, lane, label, fn))
        now = loop.time()
        lane.arrivals.observe(now, joins_waiting=bool(lane.pending))
        waiting = _Waiting(x, loop.create_future(), now)
        lane.pending.append(waiting)
        lane.rows += len(x)
        if lane.full is not None and lane.rows >= self.max_batch_size and not lane.full.done():
            lane.full.set_result(None)
        child(QUEUE_DEPTH, label).inc()
        return await waiting.future

    async def _drain(self, key: LaneKey, lane: _Lane, label: str, fn: BatchFn) -> None:
        loop = asyncio.get_running_loop()
        queue_depth = child(QUEUE_DEPTH, label)
        try:
            while lane.pending:
                await self._fill(lane, loop)
                batch = self._take(lane)
                queue_depth.dec(len(batch))
                child(BATCH_REQUESTS, label).observe(len(batch))
                live = lane.running = [w for w in batch if not w.future.done()]  # skip cancelled
                if not live:
                    continue
                x = live[0].inputs if len(live) == 1 else np.concatenate([w.inputs for w in live])
                try:
                    outputs = await loop.run_in_executor(self.executor, fn, x)
                except Exception as exc:
                    for w in live:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                finally:
                    lane.ran_until = loop.time()
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
            queue_depth.dec(len(lane.pending))
            for w in [*lane.running, *lane.pending]:  # left only when the loop shuts down
                if not w.future.done():
                    w.future.cancel()

    def _arrivals_of(self, key: LaneKey) -> Arrivals:
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            arrivals = self._arrivals[key] = Arrivals(self.max_queue_delay_s)
            while len(self._arrivals) > MAX_TRACKED_KEYS:
                self._arrivals.popitem(last=False)
        else:
            self._arrivals.move_to_end(key)
        return arrivals

    async def _fill(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the batch should close (the module docstring's rule).

        One timer at a time, woken early only when the batch fills: arrivals in between
        cost a few float operations (no wake-up per request); when the timer fires the
        rule is asked again with the arrivals seen meanwhile. Requests that arrived while
        the last batch ran waited for it already: they go at once."""
        while lane.rows < self.max_batch_size and lane.pending[0].arrived > lane.ran_until:
            wake = closes_at(lane.arrivals, lane.pending[0].arrived, loop.time())
            if wake is None:
                return
            lane.full = loop.create_future()
            timer = loop.call_at(wake, _resolve, lane.full)
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
