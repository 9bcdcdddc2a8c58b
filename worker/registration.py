"""A job's trained models: exported to ONNX, their label knowledge computed, registered,
and the job ended ``succeeded`` (or ``cancelled``, when a cancel arrived meanwhile).

Registration is idempotent (UNIQUE(job_id, role)), so a redelivered job that reaches it
again registers nothing twice.

The files are written before the transaction that adds the rows referring to them (an
export takes seconds; a transaction should not). Artifacts are content-addressed, so a
delete of another row with the same bytes (two identical trainings give identical label
issues) may remove the file in between; the rows are therefore added under
``lock_artifact`` of each path, the lock every delete takes, and a file found missing
under it is written again from what made it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.artifact_release import change_then_remove_unreferenced
from app.artifacts import ArtifactStore
from app.settings import Settings
from app.store import Job, JobStore, ModelStore, lock_artifact
from core import label_issues_file
from core.dataset_files import ArrayDataset
from core.statuses import JobStatus
from models.classifier import Classifier
from models.export import export_onnx
from models.label_knowledge import label_knowledge
from worker.context import JobContext, unit_checkpoint_dir
from worker.outcomes import remove_checkpoints
from worker.units import Unit

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
PARITY_ROWS = 64


@dataclass(frozen=True)
class TrainedModel:
    """A trained unit, ready to register under a role ("model", "baseline")."""

    model: Classifier
    metrics: dict  # the unit's metrics (models.train), with best_epoch, head, ...
    unit: Unit  # the unit that trained it: its checkpoint folder receives the ONNX file


@dataclass(frozen=True)
class Artifacts:
    """What registration stores besides the row: the ONNX file and the label knowledge."""

    onnx_path: str
    onnx_sha256: str
    noise_report: dict | None
    label_issues_path: str | None
    onnx_source: Path | None = None  # the exported file, kept until the job's checkpoints go
    label_issues_bytes: bytes | None = None

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.onnx_path, self.label_issues_path) if p]

    def rewrite_missing(self, artifacts: ArtifactStore) -> list[str]:
        """Write each of this model's files again if it is not there (a delete of the
        same bytes removed it after it was written); the caller holds their locks.
        Returns the paths written again."""
        written = []
        if self.onnx_source is not None and not artifacts.resolve(self.onnx_path).exists():
            artifacts.put_file(self.onnx_source, ".onnx")
            written.append(self.onnx_path)
        if (
            self.label_issues_path
            and self.label_issues_bytes is not None
            and not artifacts.resolve(self.label_issues_path).exists()
        ):
            artifacts.put_bytes(self.label_issues_bytes, ".issues.npz")
            written.append(self.label_issues_path)
        return written


def register_trained(
    ctx: JobContext,
    trained: dict[str, TrainedModel],
    data: ArrayDataset,
    settings: Settings,
    candidates: list | None,
) -> str:
    """Export each trained model (by role) to ONNX, register it, and end the job
    ``succeeded`` (or ``cancelled``, when a cancel arrived meanwhile); return that status.

    job.metrics = {"model": {...}, "baseline": {...}?, "candidates": [...]?}: the test
    metrics of both side by side.
    """
    exported = {role: export(ctx, role, t, data, settings) for role, t in trained.items()}
    stored = {
        role: store_label_knowledge(ctx, t, data, settings, *exported[role])
        for role, t in trained.items()
    }
    job_metrics: dict = {role: t.metrics for role, t in trained.items()}
    if candidates is not None:
        job_metrics["candidates"] = candidates
    cancelled = False

    def finish(session: Session) -> list[str]:
        nonlocal cancelled
        # A cancel that arrived during the export is honoured: under the job's row lock
        # (the one request_cancel takes), either the job ends cancelled here or the
        # cancel comes after it succeeded (and is answered 409).
        JobStore(session).lock(ctx.job_id)
        job = session.get(Job, ctx.job_id, with_for_update=True, populate_existing=True)
        cancelled = job is not None and job.cancel_requested
        if cancelled:
            JobStore(session).finish(ctx.job_id, JobStatus.CANCELLED)
            # The files exported for nothing, unless another row refers to the same bytes.
            return [p for a in stored.values() for p in a.paths]
        # The lock a delete of the same bytes takes (sorted: no deadlock with another
        # registration), then each file is there before a row refers to it.
        for relative in sorted({p for a in stored.values() for p in a.paths}):
            lock_artifact(session, relative)
        for files in stored.values():
            if rewritten := files.rewrite_missing(artifacts):
                log.warning("job %s: wrote %s again (removed meanwhile)", ctx.job_id, rewritten)
        register_models(session, ctx, trained, stored, job_metrics, data)
        return []

    artifacts = ArtifactStore(settings.data_dir)
    change_then_remove_unreferenced(settings, artifacts, finish, lambda paths: paths)
    remove_checkpoints(settings, ctx.job_id)
    if cancelled:
        log.info("job %s cancelled during its export", ctx.job_id)
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
    return JobStatus.SUCCEEDED


def export(
    ctx: JobContext, role: str, trained: TrainedModel, data: ArrayDataset, settings: Settings
) -> tuple[str, str, Path]:
    """Export the model to ONNX (checked: models.export) into the artifact store; return
    (relative path, sha256, the exported file in the unit's checkpoint folder)."""
    held_out = next(x for x in (data.x_test, data.x_val, data.x_train) if x is not None)
    path = unit_checkpoint_dir(settings, ctx.job_id, trained.unit) / "model.onnx"
    export_onnx(
        trained.model,
        path,
        class_names=data.class_names,
        parity_inputs=held_out[:PARITY_ROWS],
        extra_metadata={"job_id": ctx.job_id, "role": role},
    )
    return (*ArtifactStore(settings.data_dir).put_file(path, ".onnx"), path)


def store_label_knowledge(
    ctx: JobContext,
    trained: TrainedModel,
    data: ArrayDataset,
    settings: Settings,
    onnx_path: str,
    onnx_sha256: str,
    onnx_source: Path | None = None,
) -> Artifacts:
    """The model's label knowledge (models.label_knowledge), its label issues put in the
    artifact store; with the exported file, everything its row refers to."""
    knowledge = label_knowledge(trained.model, data, ctx.run_spec.train.seed)
    issues_path, encoded = None, None
    if knowledge.issues is not None:
        encoded = label_issues_file.encode(*knowledge.issues)
        issues_path = ArtifactStore(settings.data_dir).put_bytes(encoded, ".issues.npz")[0]
    return Artifacts(
        onnx_path, onnx_sha256, knowledge.noise_report, issues_path, onnx_source, encoded
    )


def register_models(
    session: Session,
    ctx: JobContext,
    trained: dict[str, TrainedModel],
    stored: dict[str, Artifacts],
    job_metrics: dict,
    data: ArrayDataset,
) -> None:
    """The models' rows and the job's end (succeeded), in the caller's transaction."""
    models = ModelStore(session)
    ids = {}
    for role, t in trained.items():
        files = stored[role]
        other = "baseline" if role == "model" else None
        row = models.register(
            ctx.job_id,
            role,
            head=t.metrics["head"],
            task=data.task,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            class_names=data.class_names,
            metrics=t.metrics,
            baseline_metrics=job_metrics.get(other) if other else None,
            onnx_path=files.onnx_path,
            onnx_sha256=files.onnx_sha256,
            noise_report=files.noise_report,
            label_issues_path=files.label_issues_path,
        )
        ids[role] = row.id
    JobStore(session).finish(
        ctx.job_id,
        JobStatus.SUCCEEDED,
        metrics=job_metrics,
        model_id=ids.get("model"),
        baseline_model_id=ids.get("baseline"),
    )
