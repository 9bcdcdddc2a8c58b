"""A training job as plain functions (no Celery here): worker/tasks.py calls them.

A job trains one or more *units* (``Unit``), each a models.train run with its own
checkpoint folder ``data_dir/checkpoints/<job_id>/<unit.folder>``:

- role ``"model"``: the requested head; ``"baseline"``: the softmax baseline on the
  same data and budget (``compare_baseline``);
- ``temperature: "auto"``: one ``"candidate"`` unit per grid temperature instead of
  ``"model"``; models.train.select_temperature picks the best validation NLL. These run
  as a Celery chord (tasks.py), so several workers train them at once; ``run_unit`` and
  ``finish_units`` are its parts.

A unit's ``phase`` ("model", "baseline", "tau=1.5") is how progress and history name
it over HTTP.

Fixed-temperature jobs run their units one after the other in ``run_job``.

Store outages: a connection-kind database error anywhere in a job (a progress write,
the cancel poll, ``fail`` itself) never fails the job and never lets its message be
acknowledged: it leaves as ``StoreOutage``; tasks.py then waits, with backoff, until the
store answers again (taking no other message meanwhile), hands the attempt back
(``release_attempt``) and the message back to the broker; the job resumes from its
checkpoint.

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
from typing import Literal

import numpy as np
import torch
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app import label_issues_file
from app.artifacts import ArtifactStore
from app.db import ping as ping_store
from app.db import session_scope
from app.settings import Settings
from app.statuses import TERMINAL_STATUSES, JobStatus
from app.store import DatasetStore, Job, JobStore, Model, ModelStore
from models.backbones import resolve_weights
from models.data import ArrayDataset, ImageFiles, load_dataset, open_manifest
from models.export import export_onnx
from models.heads import LinearHead
from models.label_issues import find_label_issues_in_chunks, noise_free_probs
from models.noise_report import NoNoiseModel, noise_report
from models.spec import RunSpec, temperature_label, validate_run
from models.train import Callbacks, Cancelled, TrainResult, select_temperature, train

log = logging.getLogger("hetserve.worker")

REPORTED_METRICS = (
    "test_accuracy",
    "test_nll",
    "test_ece",
    "test_brier",
    "noise_free_test_accuracy",
    "noise_free_test_nll",
    "noise_free_test_ece",
    "noise_free_test_brier",
)
# The noise report's flip rates: S draws per training row, S = DRAWS // N within
# [MIN, MAX] (100 up to N = 2000, fewer above: the rates pool over rows, and the draws
# dominate the step's time; docs/models.md has the timings).
NOISE_REPORT_DRAWS = 200_000
NOISE_REPORT_SAMPLES = (10, 100)
LABEL_ISSUE_CHUNK_ROWS = 4096  # rows of noise-free probabilities held at once
PARITY_ROWS = 64
REFERENCE_FORMATS = ("imagefolder", "npz-ref")  # datasets registered where they are


# Set on the worker's warm shutdown (tasks.py). A running job then stops at its next
# step and goes back to the broker at once (it resumes from its last epoch checkpoint
# elsewhere) instead of holding an unacknowledged message until Redis's visibility
# timeout (hours) hands it out again.
STOPPING = threading.Event()

# Jobs whose message this worker process holds right now (tasks.py): the sweeper
# never re-queues them.
HELD_HERE: set[str] = set()


class JobTimeLimit(Exception):
    """The job ran past settings.job_time_limit_s."""


class WorkerStopping(Exception):
    """The worker is shutting down: hand the job back to the broker."""


class StoreOutage(Exception):
    """The store could not be reached: the job must go back to the broker, unharmed.

    ``attempt_counted``: this delivery's start_attempt committed (release_attempt undoes it).
    """

    def __init__(self, job_id: str, attempt_counted: bool):
        super().__init__(f"job {job_id}: the store is unreachable")
        self.job_id, self.attempt_counted = job_id, attempt_counted


def is_store_outage(exc: BaseException | None) -> bool:
    """A connection-kind SQLAlchemy error (server gone, refused, connection reset, SQLite
    locked): the store is unreachable for now, not the job wrong. Looks down the chain
    of causes too."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StoreOutage):
            return True
        if isinstance(exc, (OperationalError, InterfaceError)):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def wait_for_store(settings: Settings) -> bool | None:
    """Block until the store answers (backoff 0.5 s doubling up to store_retry_max_s).
    True: it was down and answers again; False: it answered at once (the error was
    probably not an outage: a schema error, say); None: the worker started stopping
    first. The worker takes no other message meanwhile (solo pool, prefetch 1), so
    queued jobs stay queued in the broker."""
    delay, was_down = 0.5, False
    while not STOPPING.is_set():
        try:
            ping_store(settings)
            return was_down
        except Exception as exc:
            log.warning("store unreachable (%s); retrying in %.1f s", describe(exc), delay)
        was_down = True
        STOPPING.wait(delay)
        delay = min(delay * 2, settings.store_retry_max_s)
    return None


def release_attempt(job_id: str, settings: Settings) -> None:
    """Undo this delivery's start_attempt: an outage of the store is not the job's
    fault and must not use up its max_job_attempts. Best effort."""
    try:
        with session_scope(settings) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts > 0)
                .values(attempts=Job.attempts - 1)
            )
    except Exception as exc:
        log.warning("job %s: could not release the attempt: %s", job_id, describe(exc))


Role = Literal["model", "baseline", "candidate"]


@dataclass(frozen=True)
class Unit:
    """One training run of a job: the model, the baseline, or one grid temperature of
    temperature "auto" (a candidate for the model)."""

    role: Role
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.role not in ("model", "baseline", "candidate"):
            raise ValueError(f"unknown unit role {self.role!r}")
        if (self.role == "candidate") != (self.temperature is not None):
            raise ValueError("a candidate unit has a temperature, and only a candidate")

    @property
    def phase(self) -> str:
        """Its name in the job's progress and history: "model", "baseline", "tau=1.5"."""
        if self.role == "candidate":
            return f"tau={temperature_label(self.temperature)}"
        return self.role

    @property
    def folder(self) -> str:
        return self.phase.replace("=", "_")

    def spec(self, run_spec: RunSpec) -> RunSpec:
        if self.role == "baseline":
            return run_spec.as_baseline()
        if self.role == "candidate":
            return run_spec.with_temperature(self.temperature)
        return run_spec

    def to_message(self) -> dict:
        return {"role": self.role, "temperature": self.temperature}

    @classmethod
    def from_message(cls, message: dict) -> Unit:
        temperature = message.get("temperature")
        return cls(message["role"], None if temperature is None else float(temperature))


def job_units(run_spec: RunSpec, compare_baseline: bool) -> list[Unit]:
    units = (
        [Unit("candidate", t) for t in run_spec.head.temperature_grid]
        if run_spec.auto_temperature
        else [Unit("model")]
    )
    if compare_baseline:
        units.append(Unit("baseline"))
    return units


@dataclass
class JobContext:
    """What a unit needs, read once from the store."""

    job_id: str
    spec: dict
    run_spec: RunSpec
    dataset_path: Path
    deadline: float  # time.time() after which this attempt fails
    units: list[Unit]
    dataset_format: str = "npz"


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
        results = {}
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


class UnitOutcome:
    """The ``status`` of a unit's summary."""

    TRAINED = "trained"
    SKIPPED = "skipped"
    CANCELLED = JobStatus.CANCELLED.value
    FAILED = JobStatus.FAILED.value


def unit_summary(unit: Unit, status: str, metrics: dict | None = None, error=None) -> dict:
    metrics = metrics or {}
    return {
        "unit": unit.to_message(),
        "status": status,
        "val_nll": metrics.get("val_nll"),
        "val_accuracy": metrics.get("val_accuracy"),
        "error": error,
    }


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
        best, table = select_temperature([(unit.temperature, s) for unit, s in candidates])
        sources = {"model": candidates[best][0], "baseline": Unit("baseline")}
        results = {}
        for role, source in sources.items():
            if source not in ctx.units:
                continue
            unit_dir = unit_checkpoint_dir(settings, job_id, source)
            model = torch.load(unit_dir / "model.pt", weights_only=False)
            metrics = json.loads((unit_dir / "metrics.json").read_text())
            results[role] = (model, metrics, source)
        return register_trained(ctx, results, data, settings, candidates=table)
    except Exception as exc:
        if is_store_outage(exc):
            raise StoreOutage(job_id, attempt_counted=False) from exc
        return fail(job_id, settings, exc)


# -- pieces -------------------------------------------------------------------------


def load_context(job_id: str, settings: Settings, for_training: bool = True) -> JobContext:
    """The job's spec, dataset and units. ``for_training``: also check the pretrained
    weights file the training will read (finish_units, which only exports, does not)."""
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        dataset = DatasetStore(session).get(job.dataset_id)
        if dataset is None:
            raise FileNotFoundError(f"dataset {job.dataset_id} no longer exists")
        spec = dict(job.spec)
        dataset_path = ArtifactStore(settings.data_dir).resolve(dataset.artifact_path)
        dataset_format = dataset.format
        # The same checks the API ran before it accepted the job.
        run_spec = validate_run(spec, dataset)
        input_shape = list(dataset.input_shape)
    if for_training:  # what only the worker can check: the weights file it will read
        backbone = resolve_weights(run_spec.backbone, input_shape, settings.weights_dir)
        run_spec = run_spec.model_copy(update={"backbone": backbone})
    units = job_units(run_spec, bool(spec.get("compare_baseline")))
    # The limit holds per attempt (like Celery's task time limit): a redelivered job that
    # resumes from a checkpoint gets the full time again.
    return JobContext(
        job_id,
        spec,
        run_spec,
        dataset_path,
        time.time() + settings.job_time_limit_s,
        units,
        dataset_format,
    )


def load_job_data(ctx: JobContext, settings: Settings) -> ArrayDataset:
    """The job's dataset. One registered by reference is first checked against its
    manifest (one stat per file; in object storage one listing per 1000 objects, then
    each object's ETag as it is opened): a missing or changed file fails the job, named. An
    image folder is not read here: training streams it (models.streaming)."""
    if ctx.dataset_format not in REFERENCE_FORMATS:
        return load_dataset(ctx.dataset_path)
    data = open_manifest(json.loads(ctx.dataset_path.read_text()), settings.s3_endpoint_url)
    for x in (data.x_train, data.x_val, data.x_test):
        if isinstance(x, ImageFiles):
            x.num_workers = settings.loader_workers
    return data


def unit_checkpoint_dir(settings: Settings, job_id: str, unit: Unit) -> Path:
    path = ArtifactStore(settings.data_dir).checkpoint_dir(job_id) / unit.folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_unit(ctx: JobContext, unit: Unit, data: ArrayDataset, settings: Settings) -> TrainResult:
    callbacks = StoreCallbacks(ctx, unit.phase, settings).callbacks()
    result = train(
        unit.spec(ctx.run_spec), data, callbacks, unit_checkpoint_dir(settings, ctx.job_id, unit)
    )
    backfill_history(ctx.job_id, unit.phase, result.history, settings)
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
) -> str:
    trained = {role: (r.model, unit_metrics(r), Unit(role)) for role, r in results.items()}
    return register_trained(ctx, trained, data, settings, candidates=None)


def register_trained(
    ctx: JobContext,
    trained: dict[str, tuple],
    data: ArrayDataset,
    settings: Settings,
    candidates: list | None,
) -> str:
    """Export each trained model to ONNX, register it, and end the job ``succeeded``
    (or ``cancelled``, when a cancel arrived meanwhile); return that status.

    ``trained`` maps a role ("model", "baseline") to (model, metrics, the unit that
    trained it). job.metrics = {"model": {...}, "baseline": {...}?, "candidates": [...]?}: the test
    metrics of both side by side.
    """
    artifacts = ArtifactStore(settings.data_dir)
    held_out = next(x for x in (data.x_test, data.x_val, data.x_train) if x is not None)
    exported = {}
    for phase, (model, _metrics, unit) in trained.items():
        path = unit_checkpoint_dir(settings, ctx.job_id, unit) / "model.onnx"
        export_onnx(
            model,
            path,
            class_names=data.class_names,
            parity_inputs=held_out[:PARITY_ROWS],
            extra_metadata={"job_id": ctx.job_id, "role": phase},
        )
        exported[phase] = artifacts.put_file(path, ".onnx")
    knowledge = {}
    for phase, (model, _metrics, _unit) in trained.items():
        report, issues = label_knowledge(model, data, ctx.run_spec.train.seed)
        issues_path = None if issues is None else artifacts.put_bytes(issues, ".issues.npz")[0]
        knowledge[phase] = (report, issues_path)
    job_metrics = {phase: metrics for phase, (_, metrics, _) in trained.items()}
    if candidates is not None:
        job_metrics["candidates"] = candidates
    with session_scope(settings) as session:
        # A cancel that arrived during the export is honoured: under the job's row lock
        # (the one request_cancel takes), either the job ends cancelled here or the
        # cancel comes after it succeeded (and is answered 409).
        JobStore(session).lock(ctx.job_id)
        job = session.get(Job, ctx.job_id, with_for_update=True, populate_existing=True)
        cancelled = job is not None and job.cancel_requested
        if cancelled:
            JobStore(session).finish(ctx.job_id, JobStatus.CANCELLED)
            unused = [
                path
                for path, _ in exported.values()
                if not session.scalar(select(func.count()).where(Model.onnx_path == path))
            ] + [
                path
                for _, path in knowledge.values()
                if path is not None
                and not session.scalar(select(func.count()).where(Model.label_issues_path == path))
            ]
        else:
            register_models(session, ctx, trained, exported, job_metrics, data, knowledge)
    if cancelled:
        for path in unused:
            artifacts.remove(path)
        log.info("job %s cancelled during its export", ctx.job_id)
        remove_checkpoints(settings, ctx.job_id)
        return JobStatus.CANCELLED
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
    return JobStatus.SUCCEEDED


def register_models(session, ctx, trained, exported, job_metrics, data, knowledge) -> None:
    """The models' rows and the job's end (succeeded), in the caller's transaction."""
    models = ModelStore(session)
    ids = {}
    for phase, (_, metrics, _) in trained.items():
        onnx_path, onnx_sha256 = exported[phase]
        report, issues_path = knowledge.get(phase, (None, None))
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
            noise_report=report,
            label_issues_path=issues_path,
        )
        ids[phase] = row.id
    JobStore(session).finish(
        ctx.job_id,
        JobStatus.SUCCEEDED,
        metrics=job_metrics,
        model_id=ids.get("model"),
        baseline_model_id=ids.get("baseline"),
    )


def noise_report_samples(n: int) -> int:
    low, high = NOISE_REPORT_SAMPLES
    return max(low, min(high, NOISE_REPORT_DRAWS // max(1, n)))


def label_knowledge(model, data: ArrayDataset, seed: int) -> tuple[dict | None, bytes | None]:
    """What a trained model knows about its training labels: (noise report, label
    issues as label_issues_file bytes), over every row of the dataset's uploaded
    ``x_train`` in upload order, the validation hold-out train() split off included
    (``data`` is the dataset as stored, never split), so a row index is a row of the
    upload.

    A registered image folder is read from disk again, a batch of images at a time
    (the flag rule's passes over the rows, then the noise report's).

    Multilabel: (None, None), neither is defined. A softmax baseline: no noise report
    (None), but label issues from its own softmax (cheap, and a useful comparison). A
    HET head whose covariance is exactly zero: ``{"unavailable": reason}``.
    """
    if data.task != "multiclass":
        return None, None
    start = time.perf_counter()
    x, y = data.x_train, np.asarray(data.y_train, dtype=np.int64)

    def chunks():
        # No N x K array of probabilities exists at once: each pass of the flag rule
        # recomputes them a chunk at a time (a streamed image folder: a lazy subset).
        for row in range(0, len(x), LABEL_ISSUE_CHUNK_ROWS):
            chunk = slice(row, row + LABEL_ISSUE_CHUNK_ROWS)
            rows = x[np.arange(len(x))[chunk]] if isinstance(x, ImageFiles) else x[chunk]
            yield noise_free_probs(model, rows), y[chunk]

    scores, flagged, suggested = find_label_issues_in_chunks(chunks, data.num_classes)
    issues = label_issues_file.encode(scores, flagged, y, suggested)
    try:
        report = noise_report(model, x, num_samples=noise_report_samples(len(x)), seed=seed)
    except NoNoiseModel as exc:
        report = None if isinstance(model.head, LinearHead) else {"unavailable": str(exc)}
    log.info(
        "label knowledge over %d training rows (K=%d): %d flagged, %.2f s",
        len(x),
        data.num_classes,
        int(flagged.sum()),
        time.perf_counter() - start,
    )
    return report, issues


def end_cancelled(job_id: str, settings: Settings) -> str:
    with session_scope(settings) as session:
        ended = JobStore(session).finish(job_id, JobStatus.CANCELLED)
    if not ended:
        return "skipped"  # another attempt ended the job first: leave its outcome
    log.info("job %s cancelled", job_id)
    remove_checkpoints(settings, job_id)
    return JobStatus.CANCELLED


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


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
