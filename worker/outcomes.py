"""How a job ends without a model: failed or cancelled, its checkpoints removed.

Each returns the status it set, or "skipped" when another attempt ended the job first
(its outcome then stays).

A disk-full error (``app.disk_space.is_disk_full``: ENOSPC writing a checkpoint, the ONNX
file or a label-issues file, or the SQLite store's "database or disk is full") fails the
job with an error naming "no space left". ``fail`` first removes the job's checkpoints (the
room to write the failure in), releases the data folder's space reserve if the store still
cannot write, and keeps retrying the write with backoff until it lands or the worker stops
(taking no other message meanwhile), so the job always ends ``failed``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from app import disk_space
from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import JobStore
from core.statuses import JobStatus
from worker.outage import describe
from worker.shutdown import STOPPING, WorkerStopping

log = logging.getLogger("hetserve.worker")


def end_cancelled(job_id: str, settings: Settings) -> str:
    with session_scope(settings) as session:
        ended = JobStore(session).finish(job_id, JobStatus.CANCELLED)
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    log.info("job %s cancelled", job_id)
    remove_checkpoints(settings, job_id)
    return JobStatus.CANCELLED


def fail(job_id: str, settings: Settings, exc: BaseException) -> str:
    log.error("job %s failed: %s", job_id, describe(exc), exc_info=exc)
    error = describe(exc)

    def record() -> bool:
        with session_scope(settings) as session:
            return JobStore(session).finish(job_id, JobStatus.FAILED, error=error)

    if disk_space.is_disk_full(exc):
        error = f"{disk_space.NO_SPACE} ({settings.data_dir}): {error}"[:2000]
        remove_checkpoints(settings, job_id)  # the room to write the failure in
        ended = record_on_full_disk(record, settings)
    else:
        ended = record()
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    remove_checkpoints(settings, job_id)
    return JobStatus.FAILED


def record_on_full_disk(record: Callable[[], bool], settings: Settings) -> bool:
    """``record()`` (one transaction) on a full volume: with the space reserve released
    if need be, then retried with backoff (0.5 s doubling up to store_retry_max_s) while
    the disk stays full. Raises WorkerStopping when the worker stops first (the job then
    goes back to the broker, or to the sweeper at the next start)."""
    delay = 0.5
    while True:
        try:
            return disk_space.releasing_reserve(settings.data_dir, record)
        except Exception as exc:
            if not disk_space.is_disk_full(exc):
                raise
            log.warning("%s; retrying the job's failure in %.1f s", describe(exc), delay)
        if STOPPING.wait(delay):
            raise WorkerStopping("the worker is shutting down")
        delay = min(delay * 2, settings.store_retry_max_s)


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(ArtifactStore(settings.data_dir).checkpoint_dir(job_id), ignore_errors=True)
