"""A training job as plain functions (no Celery here): worker/tasks.py parses the
message and calls them.

A job trains one or more units (worker/units.py). Fixed-temperature jobs run their units
one after the other in ``run_job``; temperature "auto" answers a ``FanOut``, and its
units run as a Celery chord (worker/chord_units.py), so several workers train them at once.

The modules a job is made of: worker/context.py (what it reads from the store once),
worker/progress.py (progress, history, cancellation and the time limit),
worker/registration.py (export and registration of the trained models),
worker/outcomes.py (failed or cancelled), worker/outage.py (an unreachable store never
fails a job), worker/shutdown.py (the worker's warm shutdown).

Crash safety: each epoch ends with a checkpoint (models.train), so a redelivered job
resumes from its last finished epoch; model registration is idempotent
(UNIQUE(job_id, role)); a job that already ended is never run again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.db import session_scope
from app.settings import Settings
from app.store import JobStore
from core.dataset_files import ArrayDataset
from models.train import Cancelled, TrainResult, train
from worker.context import JobContext, load_context, load_job_data, unit_checkpoint_dir
from worker.outage import StoreOutage, is_store_outage
from worker.outcomes import end_cancelled, fail
from worker.progress import StoreCallbacks, backfill_history
from worker.registration import TrainedModel, register_trained
from worker.shutdown import STOPPING, WorkerStopping
from worker.units import Role, Unit

log = logging.getLogger("hetserve.worker")


@dataclass
class FanOut:
    """run_job's answer for temperature "auto": train these units in parallel."""

    job_id: str
    units: list[Unit]


def run_job(job_id: str, settings: Settings) -> str | FanOut:
    """Run (or resume) a job; return its final status, "skipped", or a FanOut."""
    if STOPPING.is_set():  # a message fetched during shutdown goes straight back
        raise WorkerStopping("the worker is shutting down")
    try:
        with session_scope(settings) as session:
            job = JobStore(session).start_attempt(job_id)
            if job is None:
                log.info("job %s already ended or does not exist; nothing to do", job_id)
                return "skipped"
            attempt = job.attempts
    except Exception as exc:
        if is_store_outage(exc):
            raise StoreOutage(job_id, attempt_counted=False) from exc
        raise
    try:
        return run_attempt(job_id, attempt, settings)
    except Exception as exc:
        if is_store_outage(exc):
            raise StoreOutage(job_id, attempt_counted=True) from exc
        raise


def run_attempt(job_id: str, attempt: int, settings: Settings) -> str | FanOut:
    log.info("job %s: attempt %d", job_id, attempt)
    if attempt > settings.max_job_attempts:
        # acks_late + reject_on_worker_lost redeliver a job whose worker died; a job that
        # kills its worker every time (out of memory, say) must not loop forever.
        return fail(
            job_id,
            settings,
            RuntimeError(
                f"gave up after {attempt - 1} attempts: the worker running this job died or "
                f"was stopped each time (out of memory?); HETSERVE_MAX_JOB_ATTEMPTS="
                f"{settings.max_job_attempts}"
            ),
        )
    try:
        ctx = load_context(job_id, settings)
    except Exception as exc:
        if is_store_outage(exc):
            raise
        return fail(job_id, settings, exc)
    if ctx.run_spec.auto_temperature:
        return FanOut(job_id, ctx.units)

    try:
        data = load_job_data(ctx, settings)
        results: dict[Role, TrainResult] = {}
        for unit in ctx.units:
            results[unit.role] = train_unit(ctx, unit, data, settings)
        return register_and_finish(ctx, results, data, settings)
    except WorkerStopping:
        raise
    except Cancelled:
        return end_cancelled(job_id, settings)
    except Exception as exc:
        if is_store_outage(exc):
            raise
        return fail(job_id, settings, exc)


def train_unit(ctx: JobContext, unit: Unit, data: ArrayDataset, settings: Settings) -> TrainResult:
    callbacks = StoreCallbacks(ctx, unit.phase, settings).callbacks()
    result = train(
        unit.spec(ctx.run_spec), data, callbacks, unit_checkpoint_dir(settings, ctx.job_id, unit)
    )
    backfill_history(ctx.job_id, unit.phase, result.history, settings)
    return result


def unit_metrics(result: TrainResult) -> dict:
    return {
        **result.metrics,
        "best_epoch": result.best_epoch,
        "resumed_from_epoch": result.resumed_from_epoch,
        "head": result.spec.head.kind,
    }


def register_and_finish(
    ctx: JobContext, results: dict[Role, TrainResult], data: ArrayDataset, settings: Settings
) -> str:
    trained: dict[str, TrainedModel] = {
        role: TrainedModel(r.model, unit_metrics(r), Unit(role)) for role, r in results.items()
    }
    return register_trained(ctx, trained, data, settings, candidates=None)
