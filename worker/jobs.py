"""A training job as plain functions (no Celery here): worker/tasks.py calls them.

A job trains one or more *units*, each a models.train run with its own checkpoint
folder ``data_dir/checkpoints/<job_id>/<phase>``:

- ``"model"``: the requested head; ``"baseline"``: the softmax baseline on the same
  data and budget (``compare_baseline``);
- ``temperature: "auto"``: one unit ``"tau=<t>"`` per grid temperature instead of
  ``"model"``; the best validation NLL wins. These run as a Celery chord (tasks.py), so
  several workers train them at once; ``run_unit`` and ``finish_units`` are its parts.

Fixed-temperature jobs run their units one after the other in ``run_job``.

Crash safety: each epoch ends with a checkpoint (models.train), so a redelivered job
resumes from its last finished epoch; model registration is idempotent
(UNIQUE(job_id, role)); a job that already ended is never run again.
Cancellation is cooperative: ``should_cancel`` reads the job's flag at most once per
``cancel_poll_interval_s``. The job time limit (per attempt) is enforced the same way:
the solo pool cannot enforce Celery's time limits.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import TERMINAL_STATUSES, DatasetStore, JobStore, ModelStore
from models.data import ArrayDataset, load_dataset
from models.export import export_onnx
from models.spec import RunSpec
from models.train import Callbacks, Cancelled, TrainResult, train

log = logging.getLogger("hetserve.worker")

REPORTED_METRICS = ("test_accuracy", "test_nll", "test_ece", "test_brier")
PARITY_ROWS = 64


# Set on the worker's warm shutdown (tasks.py). A running job then stops at its next
# step and goes back to the broker at once (it resumes from its last epoch checkpoint
# elsewhere) instead of holding an unacknowledged message until Redis's visibility
# timeout (hours) hands it out again.
STOPPING = threading.Event()


class JobTimeLimit(Exception):
    """The job ran past settings.job_time_limit_s."""


class WorkerStopping(Exception):
    """The worker is shutting down: hand the job back to the broker."""


@dataclass
class JobContext:
    """What a unit needs, read once from the store."""

    job_id: str
    spec: dict
    run_spec: RunSpec
    dataset_path: Path
    deadline: float  # time.time() after which this attempt fails
    units: list[str]


@dataclass
class FanOut:
    """run_job's answer for temperature "auto": train these units in parallel."""

    job_id: str
    units: list[str]


def run_job(job_id: str, settings: Settings) -> str | FanOut:
    """Run (or resume) a job; return its final status, "skipped", or a FanOut."""
    if STOPPING.is_set():  # a message fetched during shutdown goes straight back
        raise WorkerStopping("the worker is shutting down")
    with session_scope(settings) as session:
        job = JobStore(session).start_attempt(job_id)
        if job is None:
            log.info("job %s already ended or does not exist; nothing to do", job_id)
            return "skipped"
        attempt = job.attempts
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
        return fail(job_id, settings, exc)
    if is_auto(ctx.run_spec):
        return FanOut(job_id, ctx.units)

    try:
        data = load_dataset(ctx.dataset_path)
        results = {}
        for index, phase in enumerate(ctx.units):
            results[phase] = train_unit(ctx, phase, data, settings, index)
        register_and_finish(ctx, results, data, settings)
        return "succeeded"
    except WorkerStopping:
        raise
    except Cancelled:
        return end_cancelled(job_id, settings)
    except Exception as exc:
        return fail(job_id, settings, exc)


def run_unit(job_id: str, phase: str, settings: Settings) -> dict:
    """One unit of an "auto" job; never raises (the chord's finish must run), except
    WorkerStopping, which hands the unit back to the broker.

    Returns {"phase", "status": "trained"|"cancelled"|"failed"|"skipped", "val_nll", "error"}; the
    trained model and its metrics wait in the unit's checkpoint folder for finish_units.
    """
    if STOPPING.is_set():
        raise WorkerStopping("the worker is shutting down")
    try:
        with session_scope(settings) as session:
            current = JobStore(session).get(job_id)
            if current is None or current.status in TERMINAL_STATUSES:
                # A unit of a chord that another delivery already finished.
                return {"phase": phase, "status": "skipped", "val_nll": None, "error": None}
        ctx = load_context(job_id, settings)
        unit_dir = unit_checkpoint_dir(settings, job_id, phase)
        done = unit_dir / "result.json"
        if done.exists():  # a redelivered unit that had finished
            return json.loads(done.read_text())
        data = load_dataset(ctx.dataset_path)
        result = train_unit(ctx, phase, data, settings, ctx.units.index(phase))
        torch.save(result.model.cpu(), unit_dir / "model.pt")
        summary = {
            "phase": phase,
            "status": "trained",
            "val_nll": result.metrics["val_nll"],
            "error": None,
        }
        (unit_dir / "metrics.json").write_text(json.dumps(unit_metrics(result)))
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary))
        tmp.replace(done)
        return summary
    except WorkerStopping:
        raise
    except Cancelled:
        return {"phase": phase, "status": "cancelled", "val_nll": None, "error": None}
    except Exception as exc:
        log.exception("job %s unit %s failed", job_id, phase)
        return {"phase": phase, "status": "failed", "val_nll": None, "error": describe(exc)}


def finish_units(job_id: str, summaries: list[dict], settings: Settings) -> str:
    """The chord's end: pick the best temperature, export, register, finish the job."""
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return "skipped"
        cancel = job.cancel_requested
    failed = [s for s in summaries if s["status"] == "failed"]
    if failed:
        return fail(
            job_id, settings, RuntimeError(f"unit {failed[0]['phase']}: {failed[0]['error']}")
        )
    if cancel or any(s["status"] == "cancelled" for s in summaries):
        return end_cancelled(job_id, settings)
    try:
        ctx = load_context(job_id, settings)
        data = load_dataset(ctx.dataset_path)
        candidates = [s for s in summaries if s["phase"].startswith("tau=")]
        best = min(candidates, key=lambda s: s["val_nll"])
        results = {}
        for phase in ("model", "baseline"):
            source = best["phase"] if phase == "model" else "baseline"
            if source not in ctx.units:
                continue
            unit_dir = unit_checkpoint_dir(settings, job_id, source)
            model = torch.load(unit_dir / "model.pt", weights_only=False)
            metrics = json.loads((unit_dir / "metrics.json").read_text())
            results[phase] = (model, metrics)
        table = [
            {
                "temperature": float(s["phase"].removeprefix("tau=")),
                "val_nll": s["val_nll"],
                "chosen": s is best,
            }
            for s in candidates
        ]
        register_trained(ctx, results, data, settings, candidates=table)
        return "succeeded"
    except Exception as exc:
        return fail(job_id, settings, exc)


# -- pieces -------------------------------------------------------------------------


def is_auto(spec: RunSpec) -> bool:
    return spec.head.kind == "het" and spec.head.temperature == "auto"


def load_context(job_id: str, settings: Settings) -> JobContext:
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        dataset = DatasetStore(session).get(job.dataset_id)
        if dataset is None:
            raise FileNotFoundError(f"dataset {job.dataset_id} no longer exists")
        spec = dict(job.spec)
        dataset_path = ArtifactStore(settings.data_dir).resolve(dataset.artifact_path)
    run_spec = RunSpec.model_validate(
        {k: spec[k] for k in ("task", "head", "backbone", "train") if k in spec}
    )
    units = (
        [f"tau={t:g}" for t in run_spec.head.temperature_grid] if is_auto(run_spec) else ["model"]
    )
    if spec.get("compare_baseline"):
        units.append("baseline")
    # The limit holds per attempt (like Celery's task time limit): a redelivered job that
    # resumes from a checkpoint gets the full time again.
    return JobContext(
        job_id, spec, run_spec, dataset_path, time.time() + settings.job_time_limit_s, units
    )


def unit_spec(ctx: JobContext, phase: str) -> RunSpec:
    if phase == "baseline":
        return ctx.run_spec.as_baseline()
    if phase.startswith("tau="):
        return ctx.run_spec.with_temperature(float(phase.removeprefix("tau=")))
    return ctx.run_spec


def unit_checkpoint_dir(settings: Settings, job_id: str, phase: str) -> Path:
    path = ArtifactStore(settings.data_dir).checkpoint_dir(job_id) / phase.replace("=", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_unit(
    ctx: JobContext, phase: str, data: ArrayDataset, settings: Settings, index: int
) -> TrainResult:
    callbacks = StoreCallbacks(ctx, phase, index, settings).callbacks()
    result = train(
        unit_spec(ctx, phase), data, callbacks, unit_checkpoint_dir(settings, ctx.job_id, phase)
    )
    backfill_history(ctx.job_id, phase, result.history, settings)
    return result


def backfill_history(job_id: str, phase: str, history: list[dict], settings: Settings) -> None:
    """Record epochs a killed attempt checkpointed but did not report (the checkpoint is
    written just before the epoch's callback), so the history lists every epoch once."""
    with session_scope(settings) as session:
        store = JobStore(session)
        seen = {h.epoch for h in store.history(job_id) if h.payload.get("phase") == phase}
        for entry in history:
            if entry["epoch"] not in seen:
                store.add_history(job_id, entry["epoch"], history_payload(phase, entry))


class StoreCallbacks:
    """Progress and history into the store; cancellation and the time limit out of it.

    Job progress: fraction = (epochs finished over all units + this epoch's part) /
    (units × epochs), where "epochs finished" is the job's history row count.
    """

    def __init__(self, ctx: JobContext, phase: str, index: int, settings: Settings):
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
            store.add_history(self.ctx.job_id, entry["epoch"], payload)
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


def history_payload(phase: str, entry: dict) -> dict:
    return {"phase": phase, **{k: v for k, v in entry.items() if k != "epoch"}}


def unit_metrics(result: TrainResult) -> dict:
    return {
        **result.metrics,
        "best_epoch": result.best_epoch,
        "resumed_from_epoch": result.resumed_from_epoch,
        "head": result.spec.head.kind,
    }


def register_and_finish(
    ctx: JobContext, results: dict[str, TrainResult], data: ArrayDataset, settings: Settings
):
    trained = {phase: (r.model, unit_metrics(r)) for phase, r in results.items()}
    register_trained(ctx, trained, data, settings, candidates=None)


def register_trained(
    ctx: JobContext,
    trained: dict[str, tuple],
    data: ArrayDataset,
    settings: Settings,
    candidates: list | None,
) -> None:
    """Export each trained model to ONNX, register it, and end the job ``succeeded``.

    job.metrics = {"model": {...}, "baseline": {...}?, "candidates": [...]?}: the test
    metrics of both side by side.
    """
    artifacts = ArtifactStore(settings.data_dir)
    held_out = next(x for x in (data.x_test, data.x_val, data.x_train) if x is not None)
    exported = {}
    for phase, (model, _metrics) in trained.items():
        path = unit_checkpoint_dir(settings, ctx.job_id, phase) / "model.onnx"
        export_onnx(
            model,
            path,
            class_names=data.class_names,
            parity_inputs=held_out[:PARITY_ROWS],
            extra_metadata={"job_id": ctx.job_id, "role": phase},
        )
        exported[phase] = artifacts.put_file(path, ".onnx")
    job_metrics = {phase: metrics for phase, (_, metrics) in trained.items()}
    if candidates is not None:
        job_metrics["candidates"] = candidates
    with session_scope(settings) as session:
        models = ModelStore(session)
        ids = {}
        for phase, (_, metrics) in trained.items():
            onnx_path, onnx_sha256 = exported[phase]
            other = "baseline" if phase == "model" else None
            row = models.register(
                ctx.job_id,
                phase,
                head=metrics["head"],
                task=data.task,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                class_names=data.class_names,
                metrics=metrics,
                baseline_metrics=job_metrics.get(other) if other else None,
                onnx_path=onnx_path,
                onnx_sha256=onnx_sha256,
            )
            ids[phase] = row.id
        JobStore(session).finish(
            ctx.job_id,
            "succeeded",
            metrics=job_metrics,
            model_id=ids.get("model"),
            baseline_model_id=ids.get("baseline"),
        )
    log.info(
        "job %s succeeded: %s",
        ctx.job_id,
        {
            p: {k: m.get(k) for k in REPORTED_METRICS}
            for p, m in job_metrics.items()
            if p != "candidates"
        },
    )
    remove_checkpoints(settings, ctx.job_id)


def end_cancelled(job_id: str, settings: Settings) -> str:
    with session_scope(settings) as session:
        ended = JobStore(session).finish(job_id, "cancelled")
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    log.info("job %s cancelled", job_id)
    remove_checkpoints(settings, job_id)
    return "cancelled"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def fail(job_id: str, settings: Settings, exc: BaseException) -> str:
    log.error("job %s failed: %s", job_id, describe(exc), exc_info=exc)
    with session_scope(settings) as session:
        ended = JobStore(session).finish(job_id, "failed", error=describe(exc))
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    remove_checkpoints(settings, job_id)
    return "failed"


def remove_checkpoints(settings: Settings, job_id: str) -> None:
    shutil.rmtree(ArtifactStore(settings.data_dir).checkpoint_dir(job_id), ignore_errors=True)
