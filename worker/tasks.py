"""Celery tasks: parse the message, call a plain function (worker/jobs.py, worker/chord_units.py).

``hetserve.train_job(job_id)`` runs a job; for temperature "auto" it fans the units out
as a chord: ``hetserve.train_unit(job_id, unit)`` (``Unit.to_message()``) for each
grid temperature (and the baseline), then ``hetserve.finish_units(summaries, job_id)`` keeps the best validation
NLL. A chord needs a result backend: Celery's database backend (settings.result_backend).

Every task runs inside ``handing_back``: a worker shutting down, or a store that cannot
be reached, puts the message back on the broker (``Reject(requeue=True)``; with
acks_late nothing was acknowledged) instead of acknowledging a job that did not end.
While the store is down the task blocks (outage.wait_for_store), so the worker does not
take, and lose, the next queued message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import chord
from celery.exceptions import Reject
from celery.signals import worker_shutting_down

from app.logs import bind_job
from app.settings import get_settings
from worker import chord_units, jobs, outage
from worker.celery_app import celery_app
from worker.shutdown import HELD_HERE, STOPPING, WorkerStopping
from worker.units import Unit

log = logging.getLogger("hetserve.worker")


@worker_shutting_down.connect
def hand_back_running_job(**_kwargs) -> None:
    # Runs inside the SIGTERM handler: only set a flag, the training loop does the rest.
    STOPPING.set()


@contextmanager
def handing_back(job_id: str) -> Iterator[None]:
    """Bind the job to the log lines, mark it held by this worker (the sweeper skips
    it), and turn WorkerStopping and store outages into Reject(requeue=True)."""
    with bind_job(job_id):
        HELD_HERE.add(job_id)
        try:
            yield
        except WorkerStopping as exc:
            # acks_late: rejecting with requeue puts the message back now.
            raise Reject(str(exc), requeue=True) from None
        except Exception as exc:
            if not outage.is_store_outage(exc):
                raise
            settings = get_settings()
            counted = getattr(exc, "attempt_counted", False)
            log.warning("job %s: store unreachable; keeping the message until it is back", job_id)
            answered = outage.wait_for_store(settings)
            if answered is False and not counted:
                # The store answers: not an outage but an error that would recur on
                # every delivery. Let it end the task (the sweeper may retry later).
                raise
            if answered and counted:
                outage.release_attempt(job_id, settings)
            # Not released when the store answered at once: max_job_attempts bounds a
            # database error that is not an outage.
            log.warning("job %s: handing the message back to the broker", job_id)
            raise Reject(f"store outage: {outage.describe(exc)}", requeue=True) from None
        finally:
            HELD_HERE.discard(job_id)


@celery_app.task(name="hetserve.train_job")
def train_job(job_id: str) -> str:
    with handing_back(str(job_id)):
        outcome = jobs.run_job(str(job_id), get_settings())
    if isinstance(outcome, jobs.FanOut):
        header = [train_unit.s(outcome.job_id, unit.to_message()) for unit in outcome.units]
        chord(header)(finish_units.s(outcome.job_id))
        return "fanned out"
    return outcome


@celery_app.task(name="hetserve.train_unit", ignore_result=False)
def train_unit(job_id: str, unit: dict) -> dict:
    with handing_back(str(job_id)):
        return chord_units.run_unit(str(job_id), Unit.from_message(unit), get_settings())


@celery_app.task(name="hetserve.finish_units")
def finish_units(summaries: list[dict], job_id: str) -> str:
    with handing_back(str(job_id)):
        return chord_units.finish_units(str(job_id), list(summaries), get_settings())
