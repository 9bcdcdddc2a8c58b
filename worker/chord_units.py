"""The units of a temperature "auto" job as a Celery chord (worker/tasks.py): one
``run_unit`` per grid temperature (and the baseline), then ``finish_units``, which keeps
the best validation NLL (models.train.select_temperature), exports and registers.

A unit's trained model and metrics wait in its checkpoint folder for finish_units; a
redelivered unit that had finished answers its stored summary.
"""

from __future__ import annotations

import json
import logging

import torch

from app.db import session_scope
from app.settings import Settings
from app.store import JobStore
from core.statuses import TERMINAL_STATUSES
from models.train import Cancelled, select_temperature
from worker.context import load_context, load_job_data, unit_checkpoint_dir
from worker.jobs import train_unit, unit_metrics
from worker.outage import StoreOutage, describe, is_store_outage
from worker.outcomes import end_cancelled, fail
from worker.registration import TrainedModel, register_trained
from worker.shutdown import STOPPING, WorkerStopping
from worker.units import Unit, UnitOutcome, unit_summary

log = logging.getLogger("hetserve.worker")


def run_unit(job_id: str, unit: Unit, settings: Settings) -> dict:
    """One unit of an "auto" job; never raises (the chord's finish must run), except
    WorkerStopping, which hands the unit back to the broker.

    Returns ``unit_summary``: {"unit", "status" (a UnitOutcome), "val_nll",
    "val_accuracy", "error"}; the trained model and its metrics wait in the unit's
    checkpoint folder for finish_units.
    """
    if STOPPING.is_set():
        raise WorkerStopping("the worker is shutting down")
    try:
        with session_scope(settings) as session:
            current = JobStore(session).get(job_id)
            if current is None or current.status in TERMINAL_STATUSES:
                # A unit of a chord that another delivery already finished.
                return unit_summary(unit, UnitOutcome.SKIPPED)
        ctx = load_context(job_id, settings)
        unit_dir = unit_checkpoint_dir(settings, job_id, unit)
        done = unit_dir / "result.json"
        if done.exists():  # a redelivered unit that had finished
            return json.loads(done.read_text())
        data = load_job_data(ctx, settings)
        result = train_unit(ctx, unit, data, settings)
        torch.save(result.model.cpu(), unit_dir / "model.pt")
        summary = unit_summary(unit, UnitOutcome.TRAINED, result.metrics)
        (unit_dir / "metrics.json").write_text(json.dumps(unit_metrics(result)))
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary))
        tmp.replace(done)
        return summary
    except WorkerStopping:
        raise
    except Cancelled:
        return unit_summary(unit, UnitOutcome.CANCELLED)
    except Exception as exc:
        if is_store_outage(exc):
            raise StoreOutage(job_id, attempt_counted=False) from exc
        log.exception("job %s unit %s failed", job_id, unit.phase)
        return unit_summary(unit, UnitOutcome.FAILED, error=describe(exc))


def finish_units(job_id: str, summaries: list[dict], settings: Settings) -> str:
    """The chord's end: pick the best temperature, export, register, finish the job."""
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return "skipped"
        cancel = job.cancel_requested
    failed = [s for s in summaries if s["status"] == UnitOutcome.FAILED]
    if failed:
        unit = Unit.from_message(failed[0]["unit"])
        return fail(job_id, settings, RuntimeError(f"unit {unit.phase}: {failed[0]['error']}"))
    if cancel or any(s["status"] == UnitOutcome.CANCELLED for s in summaries):
        return end_cancelled(job_id, settings)
    try:
        ctx = load_context(job_id, settings, for_training=False)
        data = load_job_data(ctx, settings)
        units = [(Unit.from_message(s["unit"]), s) for s in summaries]
        candidates = [(unit, s) for unit, s in units if unit.role == "candidate"]
        best, table = select_temperature([(unit.swept_temperature, s) for unit, s in candidates])
        sources = {"model": candidates[best][0], "baseline": Unit("baseline")}
        results = {}
        for role, source in sources.items():
            if source not in ctx.units:
                continue
            unit_dir = unit_checkpoint_dir(settings, job_id, source)
            model = torch.load(unit_dir / "model.pt", weights_only=False)
            metrics = json.loads((unit_dir / "metrics.json").read_text())
            results[role] = TrainedModel(model, metrics, source)
        return register_trained(ctx, results, data, settings, candidates=table)
    except Exception as exc:
        if is_store_outage(exc):
            raise StoreOutage(job_id, attempt_counted=False) from exc
        return fail(job_id, settings, exc)
