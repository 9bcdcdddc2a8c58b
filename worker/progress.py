"""Progress and history into the store; cancellation and the time limit out of it.

Cancellation is cooperative: ``should_cancel`` reads the job's flag at most once per
``cancel_poll_interval_s``. The job time limit (per attempt) is enforced the same way:
the solo pool cannot enforce Celery's time limits.
"""

from __future__ import annotations

import logging
import time

from app.db import session_scope
from app.settings import Settings
from app.store import JobStore
from models.train import Callbacks
from worker.context import JobContext
from worker.shutdown import STOPPING, WorkerStopping

log = logging.getLogger("hetserve.worker")


class JobTimeLimit(Exception):
    """The job ran past settings.job_time_limit_s."""


class StoreCallbacks:
    """models.train's callbacks for one unit of a job.

    Job progress: fraction = (epochs finished over all units + this epoch's part) /
    (units × epochs), where "epochs finished" is the job's history row count.
    """

    def __init__(self, ctx: JobContext, phase: str, settings: Settings):
        self.ctx, self.phase, self.settings = ctx, phase, settings
        self.total_epochs = len(ctx.units) * ctx.run_spec.train.epochs
        self.epochs_done = self._history_count()
        self.last_progress_write = 0.0
        self.last_cancel_check = 0.0

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_step=self.on_step, on_epoch_end=self.on_epoch_end, should_cancel=self.should_cancel
        )

    def _history_count(self) -> int:
        with session_scope(self.settings) as session:
            return len(JobStore(session).history(self.ctx.job_id))

    def _progress(self, p: dict) -> dict:
        # Finished epochs are in epochs_done already; add the part of the epoch under way.
        within = p["step"] / p["steps"] if p["step"] < p["steps"] else 0.0
        fraction = min(1.0, (self.epochs_done + within) / self.total_epochs)
        return {
            "epoch": p["epoch"],
            "epochs": p["epochs"],
            "fraction": round(fraction, 4),
            "phase": self.phase,
        }

    def on_step(self, p: dict) -> None:
        now = time.monotonic()
        if now - self.last_progress_write < 0.5:
            return
        self.last_progress_write = now
        with session_scope(self.settings) as session:
            JobStore(session).set_progress(self.ctx.job_id, self._progress(p))

    def on_epoch_end(self, entry: dict) -> None:
        payload = history_payload(self.phase, entry)
        with session_scope(self.settings) as session:
            store = JobStore(session)
            store.record_epoch(self.ctx.job_id, entry["epoch"], payload)
            self.epochs_done = len(store.history(self.ctx.job_id))
            store.set_progress(self.ctx.job_id, self._progress(entry))
        log.info(
            "job %s %s epoch %d/%d val %s",
            self.ctx.job_id,
            self.phase,
            entry["epoch"],
            entry["epochs"],
            entry["val"],
        )

    def should_cancel(self) -> bool:
        if STOPPING.is_set():
            raise WorkerStopping("the worker is shutting down")
        now = time.monotonic()
        if now - self.last_cancel_check < self.settings.cancel_poll_interval_s:
            return False
        self.last_cancel_check = now
        if time.time() > self.ctx.deadline:
            raise JobTimeLimit(f"job exceeded its time limit of {self.settings.job_time_limit_s} s")
        with session_scope(self.settings) as session:
            return JobStore(session).cancel_requested(self.ctx.job_id)


def backfill_history(job_id: str, phase: str, history: list[dict], settings: Settings) -> None:
    """Record epochs a killed attempt checkpointed but did not report (the checkpoint is
    written just before the epoch's callback), so the history lists every epoch once."""
    with session_scope(settings) as session:
        store = JobStore(session)
        seen = {h.epoch for h in store.history(job_id) if h.payload.get("phase") == phase}
        for entry in history:
            if entry["epoch"] not in seen:
                store.add_history(job_id, entry["epoch"], history_payload(phase, entry))


def history_payload(phase: str, entry: dict) -> dict:
    return {"phase": phase, **{k: v for k, v in entry.items() if k != "epoch"}}
