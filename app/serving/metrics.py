"""Prometheus metrics of the serving path, exposed at ``GET /metrics`` (no auth).

| metric                                   | labels                      | what                                  |
|------------------------------------------|-----------------------------|---------------------------------------|
| hetserve_http_requests_total             | route, method, model, status| requests answered                     |
| hetserve_http_request_duration_seconds   | route, method, model        | handler latency (histogram)           |
| hetserve_batch_rows                      | model                       | rows per onnxruntime call (histogram) |
| hetserve_batch_requests                  | model                       | requests merged per call (histogram)  |
| hetserve_inference_duration_seconds      | model                       | one onnxruntime call (histogram)      |
| hetserve_queue_depth                     | model                       | requests waiting for a batch          |
| hetserve_sessions_loaded                 |                             | onnxruntime sessions in the cache     |
| hetserve_jobs                            | status                      | jobs in the store, read at scrape time|

``route`` is the route template (``/v1/models/{model_ref}/predict``), never the raw
path, and ``model`` is a resolved model id (empty when the request named none that
exists): labels never carry client-chosen strings, so their number stays bounded.

Model ids are not for everyone: a scrape without a valid API key gets every series
summed over its ``model`` label (the label is gone); a scrape with one
(``Authorization: Bearer <key>``, Prometheus' ``authorization`` scrape setting) gets
the per-model series.

Each API process counts for itself. With ``uvicorn --workers N`` set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before start: prometheus_client then
writes every process's values there and ``/metrics`` sums them.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.exceptions import HTTPException

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "hetserve_http_requests", "HTTP requests answered", ["route", "method", "model", "status"]
)
REQUEST_LATENCY = Histogram(
    "hetserve_http_request_duration_seconds",
    "time from routing to the response being ready",
    ["route", "method", "model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "hetserve_batch_rows", "rows per onnxruntime call", ["model"], buckets=BATCH_BUCKETS
)
BATCH_REQUESTS = Histogram(
    "hetserve_batch_requests",
    "requests merged into one onnxruntime call",
    ["model"],
    buckets=BATCH_BUCKETS,
)
INFERENCE_LATENCY = Histogram(
    "hetserve_inference_duration_seconds",
    "one onnxruntime call",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "hetserve_queue_depth", "requests waiting for a batch", ["model"], multiprocess_mode="livesum"
)
SESSIONS_LOADED = Gauge(
    "hetserve_sessions_loaded", "onnxruntime sessions in the cache", multiprocess_mode="livesum"
)


M = TypeVar("M", Counter, Gauge, Histogram)


@functools.lru_cache(maxsize=4096)
def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, remembered: prometheus_client's own lookup (a lock, a
    dict and label checks, ~3 µs) runs once per label set instead of on every request.
    Label values are bounded (route templates, resolved model ids, statuses), and so is
    this cache; no series is ever removed, so a remembered child stays the live one."""
    return metric.labels(*labels)


class JobsByStatus:
    """``hetserve_jobs{status}``: counted in the store when scraped, so it is the same
    whichever API process answers."""

    def __init__(self, count_jobs: Callable[[], dict[str, int]]):
        self.count_jobs = count_jobs

    def collect(self):
        family = GaugeMetricFamily(
            "hetserve_jobs", "jobs in the store by status", labels=["status"]
        )
        try:
            counts = self.count_jobs()
        except Exception:  # an unreachable store must not break the scrape; /readyz reports it
            counts = {}
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


def exposition(jobs: JobsByStatus | None, per_model: bool = True) -> Response:
    """The Prometheus text format of this process (or of all, in multiprocess mode);
    without ``per_model`` every series is summed over its ``model`` label."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = REGISTRY
    registry.register(_Forward(source) if per_model else _WithoutModel(source))
    if jobs is not None:
        registry.register(jobs)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Forward:
    """Expose the process-wide registry inside a per-scrape one (which adds the jobs)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


class _WithoutModel(_Forward):
    """The same metrics with the ``model`` label summed away (no model ids listed)."""

    def collect(self):
        for family in self.registry.collect():
            merged: dict[tuple, list] = {}
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "model"}
                key = (sample.name, tuple(sorted(labels.items())))
                if key in merged:  # a sum, but the earliest of the _created timestamps
                    old = merged[key][1]
                    merged[key][1] = (
                        min(old, sample.value)
                        if sample.name.endswith("_created")
                        else old + sample.value
                    )
                else:
                    merged[key] = [labels, sample.value]
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, _), (labels, value) in merged.items():
                out.add_sample(name, labels, value)
            yield out


def instrument(handler: Callable, route: str, methods: set[str] | None) -> Callable:
    """Wrap a route handler so each request is counted and timed.

    An endpoint names the model it served with ``request.state.model_id = ...``.
    """
    method = ",".join(sorted(methods or ()))

    async def instrumented(request: Request) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status_code
            return response
        except HTTPException as exc:
            status = exc.status_code
            raise
        except RequestValidationError:
            status = 422
            raise
        finally:
            model = getattr(request.state, "model_id", "")
            child(REQUESTS, route, method, model, str(status)).inc()
            child(REQUEST_LATENCY, route, method, model).observe(time.perf_counter() - start)

    return instrumented


JSON_OFF_LOOP_BYTES = 64 * 1024


def json_off_loop(handler: Callable, route: APIRoute) -> Callable:
    """A JSON body above ``JSON_OFF_LOOP_BYTES`` is parsed in a worker thread, not on the
    event loop (FastAPI's own parse would block every other request meanwhile); the
    result is left where FastAPI looks first (``Request.json``'s cache). A body that is
    not JSON is left for FastAPI to report as its usual 422."""

    async def parsed(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if (
            getattr(route, "body_field", None) is not None
            and "json" in content_type
            and request.method in ("POST", "PUT", "PATCH")
        ):
            body = await request.body()
            if len(body) > JSON_OFF_LOOP_BYTES:
                try:
                    request._json = await run_in_threadpool(json.loads, body)
                except ValueError:
                    pass
        return await handler(request)

    return parsed


class InstrumentedRoute(APIRoute):
    """An APIRoute counted and timed for /metrics, its large JSON bodies parsed off the
    event loop: ``APIRouter(route_class=InstrumentedRoute)``."""

    def get_route_handler(self) -> Callable:
        handler = json_off_loop(super().get_route_handler(), self)
        return instrument(handler, self.path, self.methods)
