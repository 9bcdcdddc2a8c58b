"""How a job ends without a model: failed or cancelled, its checkpoints removed.

Each returns the status it set, or "skipped" when another attempt ended the job first
(its outcome then stays).
"""

from __future__ import annotations

import logging
import shutil

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import JobStore
from core.statuses import JobStatus
from worker.outage import describe

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
    with session_scope(settings) as session:
        ended = JobStore(session).finish(job_id, JobStatus.FAILED, error=describe(exc))
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    remove_checkpoints(settings, job_id)
    return JobStatus.FAILED


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(ArtifactStore(settings.data_dir).checkpoint_dir(job_id), ignore_errors=True)
