"""The store: SQLAlchemy 2 tables of docs/architecture.md and small repositories over them.

Tables: datasets, jobs, job_history, models, aliases. Ids are uuid4 hex strings (32
chars); times are timezone-aware UTC (SQLite keeps naive values, so ``UTCDateTime``
attaches UTC on the way out). Artifact paths (``datasets.artifact_path``,
``models.onnx_path``, ``models.label_issues_path``) are relative to ``settings.data_dir``: resolve them with
``app.artifacts.ArtifactStore.resolve``.

Repositories take a ``Session`` and never commit: the caller's ``session_scope``
(app/db.py) owns the transaction.
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from core.statuses import TERMINAL_STATUSES, JobStatus

MODEL_ROLES = ("model", "baseline")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    num_train: Mapped[int] = mapped_column(Integer)
    num_val: Mapped[int] = mapped_column(Integer, default=0)
    num_test: Mapped[int] = mapped_column(Integer, default=0)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    artifact_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A dataset made from another plus corrections: where it came from
    # (app/dataset_corrections.py); NULL for one uploaded or registered as it is.
    lineage: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    progress: Mapped[dict] = mapped_column(
        JSON, default=lambda: {"epoch": 0, "epochs": 0, "fraction": 0.0}
    )
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    baseline_model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobHistory(Base):
    __tablename__ = "job_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("job_id", "role", name="uq_models_job_role"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    head: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON)
    baseline_metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    onnx_path: Mapped[str] = mapped_column(Text)
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the model learned about its training labels (app/routers/noise.py): the noise
    # report (HET multiclass; {"unavailable": reason} when the head learned no noise),
    # and the label issues of every training row as an .npz artifact
    # (core/label_issues_file.py). NULL: not computed (a model trained before they were,
    # a baseline's noise report, a multilabel model).
    noise_report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    label_issues_path: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def artifact_paths(self) -> list[str]:
        """Every artifact file this row refers to (the ONNX file, the label issues)."""
        return [p for p in (self.onnx_path, self.label_issues_path) if p]


class Alias(Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class InUseError(Exception):
    """A row cannot be deleted because others refer to it."""


def lock_artifact(session: Session, artifact_path: str) -> None:
    """Hold, until this transaction ends, the lock that every transaction adding or
    removing a row that refers to ``artifact_path`` takes first (dataset upload and
    delete, job delete, garbage collection), so "count the rows, then write or remove
    the file" never interleaves with another upload or delete of the same bytes.
    PostgreSQL: a transaction-scoped advisory lock on the path; SQLite: the database
    write lock (taken now by a write that changes nothing)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        digest = hashlib.sha256(artifact_path.encode()).digest()[:8]
        key = int.from_bytes(digest, "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif dialect == "sqlite":
        session.execute(text("UPDATE datasets SET id = id WHERE 0"))


def artifact_columns() -> list:
    """Every mapped column that holds an artifact path: each ``*_path`` column of every
    table (datasets.artifact_path, models.onnx_path, and any added later), so a new
    artifact reference is counted without a change here."""
    return [
        column
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if column.name.endswith("_path")
    ]


def artifact_references(session: Session, artifact_path: str) -> int:
    """How many rows, in every table, refer to ``artifact_path``."""
    return sum(
        session.execute(
            select(func.count()).select_from(column.table).where(column == artifact_path)
        ).scalar_one()
        for column in artifact_columns()
    )


def referenced_artifacts(session: Session) -> set[str]:
    """Every artifact path some row refers to."""
    paths: set[str] = set()
    for column in artifact_columns():
        paths.update(p for p in session.scalars(select(column).distinct()) if p)
    return paths


class DatasetStore:
    def __init__(self, session: Session):
        self.session = session

    def add(self, **fields: Any) -> Dataset:
        dataset = Dataset(**fields)
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, dataset_id: str) -> Dataset | None:
        return self.session.get(Dataset, dataset_id)

    def list(self, limit: int = 100, offset: int = 0) -> list[Dataset]:
        query = (
            select(Dataset)
            .order_by(Dataset.created_at.desc(), Dataset.id)
            .limit(limit)
            .offset(offset)
        )
        return list(self.session.scalars(query))

    def lock_artifact(self, artifact_path: str) -> None:
        """``lock_artifact(session, artifact_path)`` in this transaction."""
        lock_artifact(self.session, artifact_path)

    def delete(self, dataset_id: str) -> Dataset | None:
        """Delete a dataset no job refers to; raise InUseError otherwise."""
        dataset = self.get(dataset_id)
        if dataset is None:
            return None
        jobs = self.session.scalar(
            select(func.count()).select_from(Job).where(Job.dataset_id == dataset_id)
        )
        if jobs:
            raise InUseError(f"dataset {dataset_id} is used by {jobs} job(s)")
        self.session.delete(dataset)
        self.session.flush()
        return dataset


class JobStore:
    def __init__(self, session: Session):
        self.session = session

    def create(self, dataset_id: str, spec: dict) -> Job:
        epochs = int(spec.get("train", {}).get("epochs", 0))
        progress = {"epoch": 0, "epochs": epochs, "fraction": 0.0}
        job = Job(dataset_id=dataset_id, spec=spec, status=JobStatus.QUEUED, progress=progress)
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def list(self, limit: int = 100, offset: int = 0, status: str | None = None) -> list[Job]:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(Job.status == status)
        return list(self.session.scalars(query))

    def list_by_status(self, status: str) -> builtins.list[Job]:
        return list(
            self.session.scalars(select(Job).where(Job.status == status).order_by(Job.created_at))
        )

    def start_attempt(self, job_id: str) -> Job | None:
        """Mark a queued or (redelivered) running job as running; None if it already ended."""
        job = self.session.get(Job, job_id, with_for_update=True)
        if job is None or job.status in TERMINAL_STATUSES:
            return None
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        self.session.flush()
        return job

    def set_progress(self, job_id: str, progress: dict) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(progress=progress))

    def add_history(self, job_id: str, epoch: int, payload: dict) -> None:
        self.session.add(JobHistory(job_id=job_id, epoch=epoch, payload=payload))
        self.session.flush()

    def record_epoch(self, job_id: str, epoch: int, payload: dict) -> None:
        """Add an epoch's history row after removing the rows of the same phase
        (``payload["phase"]``) from that epoch on: a run that starts again from an
        earlier epoch (a restored job whose checkpoint is older than its history, or
        gone) replaces what it reruns, so each epoch of a phase is listed once."""
        phase = payload.get("phase")
        for row in self.history(job_id):
            if row.epoch >= epoch and row.payload.get("phase") == phase:
                self.session.delete(row)
        self.add_history(job_id, epoch, payload)

    def history(self, job_id: str) -> builtins.list[JobHistory]:
        query = select(JobHistory).where(JobHistory.job_id == job_id).order_by(JobHistory.id)
        return list(self.session.scalars(query))

    def lock(self, job_id: str) -> None:
        """Lock the job's row until the transaction ends: a write that changes nothing
        (PostgreSQL: a row lock; SQLite: the database write lock, which a plain read
        would not take), so what is read next cannot change before the commit."""
        self.session.execute(
            update(Job).where(Job.id == job_id).values(cancel_requested=Job.cancel_requested)
        )

    def request_cancel(self, job_id: str) -> Job | None:
        """Set the cancel flag; a queued job ends at once (no worker has it yet). Under
        the row lock the worker takes to end the job, so a cancel is either seen by the
        worker (the job ends cancelled) or comes after the end (and changes nothing)."""
        self.lock(job_id)
        job = self.session.get(Job, job_id, with_for_update=True, populate_existing=True)
        if job is None or job.status in TERMINAL_STATUSES:
            return job
        job.cancel_requested = True
        if job.status == JobStatus.QUEUED:
            job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
        self.session.flush()
        return job

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        metrics: dict | None = None,
        error: str | None = None,
        model_id: str | None = None,
        baseline_model_id: str | None = None,
    ) -> bool:
        """End the job; False (and nothing changed) when it had already ended, so a
        duplicate attempt can never overwrite the outcome of the one that finished."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"not a terminal status: {status!r}")
        job = self.session.get(Job, job_id, with_for_update=True)
        if job is None or job.status in TERMINAL_STATUSES:
            return False
        job.status, job.finished_at, job.error = status, utcnow(), error
        if metrics is not None:
            job.metrics = metrics
        job.model_id, job.baseline_model_id = model_id, baseline_model_id
        if status == JobStatus.SUCCEEDED:
            job.progress = {**(job.progress or {}), "fraction": 1.0}
        self.session.flush()
        return True


class ModelStore:
    def __init__(self, session: Session):
        self.session = session

    def register(self, job_id: str, role: str, **fields: Any) -> Model:
        """Register a job's model or baseline once: a redelivered job gets the existing row."""
        if role not in MODEL_ROLES:
            raise ValueError(f"role must be one of {MODEL_ROLES}")
        existing = self.by_job(job_id, role)
        if existing is not None:
            return existing
        model = Model(job_id=job_id, role=role, **fields)
        try:
            with self.session.begin_nested():
                self.session.add(model)
        except IntegrityError:  # a concurrent delivery won the UNIQUE(job_id, role) race
            winner = self.by_job(job_id, role)
            assert winner is not None  # the row the UNIQUE constraint ran into
            return winner
        return model

    def by_job(self, job_id: str, role: str) -> Model | None:
        return self.session.scalar(select(Model).where(Model.job_id == job_id, Model.role == role))

    def get(self, model_id: str) -> Model | None:
        return self.session.get(Model, model_id)

    def list(self, limit: int = 100, offset: int = 0, role: str | None = None) -> list[Model]:
        query = (
            select(Model).order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
        )
        if role is not None:
            query = query.where(Model.role == role)
        return list(self.session.scalars(query))

    def count_for_job(self, job_id: str) -> int:
        return self.session.execute(
            select(func.count()).select_from(Model).where(Model.job_id == job_id)
        ).scalar_one()

    # -- aliases: a stable name pointing at one model ------------------------------
    def set_alias(self, name: str, model_id: str) -> Alias:
        alias = self.session.get(Alias, name, with_for_update=True)
        if alias is None:
            alias = Alias(name=name, model_id=model_id)
            self.session.add(alias)
        else:
            alias.model_id, alias.updated_at = model_id, utcnow()
        self.session.flush()
        return alias

    def get_alias(self, name: str) -> Alias | None:
        return self.session.get(Alias, name)

    def list_aliases(self) -> builtins.list[Alias]:
        return list(self.session.scalars(select(Alias).order_by(Alias.name)))

    def delete_alias(self, name: str) -> bool:
        alias = self.session.get(Alias, name)
        if alias is None:
            return False
        self.session.delete(alias)
        self.session.flush()
        return True

    def resolve(self, id_or_alias: str) -> Model | None:
        """A model by id, else by alias name."""
        model = self.get(id_or_alias)
        if model is not None:
            return model
        alias = self.get_alias(id_or_alias)
        return self.get(alias.model_id) if alias is not None else None
