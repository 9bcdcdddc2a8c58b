"""Celery tasks: parse the message, call a plain function of worker/jobs.py.

``hetserve.train_job(job_id)`` runs a job; for temperature "auto" it fans the units out
as a chord: ``hetserve.train_unit(job_id, unit)`` (``jobs.Unit.to_message()``) for each
grid temperature (and the baseline), then ``hetserve.finish_units(summaries, job_id)`` keeps the best validation
NLL. A chord needs a result backend: Celery's database backend (settings.result_backend).
"""

from __future__ import annotations

from celery import chord
from celery.exceptions import Reject
from celery.signals import worker_shutting_down

from app.logs import bind_job
from app.settings import get_settings
from worker import jobs
from worker.celery_app import celery_app


@worker_shutting_down.connect
def hand_back_running_job(**_kwargs) -> None:
    # Runs inside the SIGTERM handler: only set a flag, the training loop does the rest.
    jobs.STOPPING.set()


@celery_app.task(name="hetserve.train_job")
def train_job(job_id: str) -> str:
    with bind_job(str(job_id)):
        try:
            outcome = jobs.run_job(str(job_id), get_settings())
        except jobs.WorkerStopping as exc:
            # acks_late: rejecting with requeue puts the message back now.
            raise Reject(str(exc), requeue=True) from None
    if isinstance(outcome, jobs.FanOut):
        header = [train_unit.s(outcome.job_id, unit.to_message()) for unit in outcome.units]
        chord(header)(finish_units.s(outcome.job_id))
        return "fanned out"
    return outcome


@celery_app.task(name="hetserve.train_unit", ignore_result=False)
def train_unit(job_id: str, unit: dict) -> dict:
    with bind_job(str(job_id)):
        try:
            return jobs.run_unit(str(job_id), jobs.Unit.from_message(unit), get_settings())
        except jobs.WorkerStopping as exc:
            raise Reject(str(exc), requeue=True) from None


@celery_app.task(name="hetserve.finish_units")
def finish_units(summaries: list[dict], job_id: str) -> str:
    with bind_job(str(job_id)):
        return jobs.finish_units(str(job_id), list(summaries), get_settings())
