"""POST/GET/DELETE /v1/jobs, cancel, and a server-sent event stream of progress.

A job row is committed before its task is sent, so a worker never receives the id of a
job it cannot read; if the broker refuses the message the job ends ``failed`` and the
client gets a 503.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import broker, disk_space
from app.db import session_scope
from app.deps import ArtifactsDep, RuntimeDep, SessionDep, SettingsDep
from app.retention.deletion import JobConflict, JobNotFound, delete_job
from app.routers import AUTH_ERRORS, Responses
from app.schemas import JobOut, JobSpec
from app.serving.metrics import InstrumentedRoute
from app.settings import Settings
from app.store import Dataset, DatasetStore, Job, JobHistory, JobStore
from core.spec import SpecMismatch, check_fits
from core.statuses import TERMINAL_STATUSES, JobStatus

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    route_class=InstrumentedRoute,
)

EVENT_POLL_S = 0.5
KEEPALIVE_S = 15.0
NOT_FOUND: Responses = {404: {"description": "no such job"}, **AUTH_ERRORS}


def job_out(job: Job, history: list[JobHistory] | None = None) -> JobOut:
    out = JobOut.model_validate(job)
    if history is not None:
        out.history = [{"epoch": h.epoch, **h.payload} for h in history]
    return out


def check_spec_fits(spec: JobSpec, dataset: Dataset) -> dict[str, Any]:
    """The checks against the dataset, the same function the worker runs before it
    trains; returns the spec to store, task filled in."""
    run = spec.run_spec(dataset.task)
    try:
        check_fits(run, dataset)
    except SpecMismatch as exc:
        raise HTTPException(422, str(exc)) from None
    return spec.model_dump(mode="json") | {"task": run.task}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a training job",
    responses={
        401: {"description": "missing or invalid API key"},
        422: {
            "description": "invalid spec or unknown dataset",
            "content": {"application/json": {"example": {"detail": "dataset_id 'abc' not found"}}},
        },
        503: {"description": "the broker did not accept the job"},
    },
)
def create_job(spec: JobSpec, settings: SettingsDep) -> JobOut:
    with session_scope(settings) as session:
        dataset = DatasetStore(session).get(spec.dataset_id)
        if dataset is None:
            raise HTTPException(422, f"dataset_id {spec.dataset_id!r} not found")
        job = JobStore(session).create(dataset.id, check_spec_fits(spec, dataset))
    try:
        broker.send_train_job(settings, job.id)
    except Exception as exc:
        with session_scope(settings) as session:
            JobStore(session).finish(
                job.id, JobStatus.FAILED, error=f"broker did not accept the job: {exc}"
            )
        raise HTTPException(
            503, f"broker unavailable, job {job.id} not queued: {type(exc).__name__}"
        ) from None
    return job_out(job)


@router.get("", response_model=list[JobOut], summary="List jobs, newest first", responses=NOT_FOUND)
def list_jobs(
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31 - 1),
    status: JobStatus | None = None,
) -> list[JobOut]:
    jobs = JobStore(session).list(limit, offset, status)
    return [job_out(j) for j in jobs]


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job with its per-epoch history",
    responses=NOT_FOUND,
)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    store = JobStore(session)
    job = store.get(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job_out(job, store.history(job_id))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Ask a job to stop (cooperative: the worker stops within about a second)",
    responses={**NOT_FOUND, 409: {"description": "the job already ended"}},
)
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    job = JobStore(session).request_cancel(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    if job.status in TERMINAL_STATUSES and not job.cancel_requested:
        raise HTTPException(409, f"job {job_id} already {job.status}")
    return job_out(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete an ended job: its row, history and checkpoints (and with models=true its models)",
    responses={
        **NOT_FOUND,
        409: {
            "description": "the job is queued or running (cancel it first), it has models "
            "and models=true was not given, or an alias points at one of its models"
        },
    },
)
async def remove_job(
    job_id: str,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
    runtime: RuntimeDep,
    models: bool = Query(
        False,
        description="also delete the job's models (refused while an alias points at one) and "
        "their ONNX files no other model shares",
    ),
) -> Response:
    try:
        deleted = await run_in_threadpool(
            disk_space.releasing_reserve,
            settings.data_dir,
            lambda: delete_job(settings, artifacts, job_id, models=models),
        )
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None
    if deleted.model_ids:
        runtime.directory.invalidate()
        for model_id in deleted.model_ids:
            runtime.sessions.forget(model_id)
    return Response(status_code=204)


def _snapshot(settings: Settings, job_id: str) -> dict[str, Any] | None:
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        return None if job is None else job_out(job).model_dump(mode="json")


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: `progress` ({id, status, progress, attempts}) on every change, then `end` with the whole job",
    response_class=StreamingResponse,
    responses={
        **NOT_FOUND,
        200: {
            "content": {
                "text/event-stream": {
                    "example": "event: progress\ndata: "
                    + json.dumps(
                        {
                            "id": "c2a7…",
                            "status": JobStatus.RUNNING,
                            "progress": {
                                "epoch": 2,
                                "epochs": 30,
                                "fraction": 0.06,
                                "phase": "model",
                            },
                            "attempts": 1,
                        },
                        ensure_ascii=False,
                    )
                    + "\n\n"
                }
            }
        },
    },
)
async def job_events(job_id: str, request: Request, settings: SettingsDep) -> StreamingResponse:
    first = await run_in_threadpool(_snapshot, settings, job_id)
    if first is None:
        raise HTTPException(404, f"job {job_id} not found")

    async def stream() -> AsyncIterator[str]:
        job, last, quiet = first, None, 0.0
        while True:
            key = (job["status"], json.dumps(job["progress"], sort_keys=True))
            if job["status"] in TERMINAL_STATUSES:
                yield f"event: end\ndata: {json.dumps(job)}\n\n"
                return
            if key != last:
                brief = {k: job[k] for k in ("id", "status", "progress", "attempts")}
                yield f"event: progress\ndata: {json.dumps(brief)}\n\n"
                last, quiet = key, 0.0
            elif quiet >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
            await asyncio.sleep(EVENT_POLL_S)
            quiet += EVENT_POLL_S
            if await request.is_disconnected():
                return
            fresh = await run_in_threadpool(_snapshot, settings, job_id)
            job = fresh or job

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
