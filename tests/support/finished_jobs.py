"""Rows and files for the retention tests, written straight into the store (no worker):
a finished job with history, a checkpoint folder and a model whose ONNX file is any
bytes (``onnx``) or a real exported model."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import JobStore, Model, ModelStore


def finished_job(
    settings: Settings,
    dataset_id: str,
    *,
    onnx: bytes | Path = b"not really onnx",
    meta: dict | None = None,
    status: str = "succeeded",
) -> tuple[str, str | None, str | None]:
    """(job id, model id, the model's ONNX path); no model when status is not succeeded."""
    artifacts = ArtifactStore(settings.data_dir)
    with session_scope(settings) as session:
        jobs = JobStore(session)
        job = jobs.create(dataset_id, {"head": {"kind": "het"}, "train": {"epochs": 2}})
        jobs.start_attempt(job.id)
        jobs.add_history(job.id, 1, {"train_loss": 1.0})
        jobs.add_history(job.id, 2, {"train_loss": 0.5})
    checkpoints = artifacts.checkpoint_dir(job.id) / "model"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint.pt").write_bytes(b"weights")
    if status != "succeeded":
        with session_scope(settings) as session:
            JobStore(session).finish(job.id, status, error="test")
        return job.id, None, None
    if isinstance(onnx, Path):
        relative, sha256 = artifacts.put_file(onnx, ".onnx")
    else:
        relative, sha256 = artifacts.put_bytes(onnx, ".onnx")
    meta = meta or {"task": "multiclass", "input_shape": [3], "class_names": ["a", "b"]}
    with session_scope(settings) as session:
        model = model_row(session, job.id, meta, relative, sha256)
        JobStore(session).finish(job.id, status, metrics={}, model_id=model.id)
    return job.id, model.id, relative


def model_row(
    session: Session,
    job_id: str,
    meta: dict,
    onnx_path: str,
    onnx_sha256: str,
    baseline_metrics: dict | None = None,
) -> Model:
    """Job ``job_id``'s HET model registered with the task, shape and classes of ``meta``
    (an ONNX file's metadata) and fixed test metrics."""
    return ModelStore(session).register(
        job_id,
        "model",
        head="het",
        task=meta["task"],
        input_shape=meta["input_shape"],
        num_classes=len(meta["class_names"]),
        class_names=meta["class_names"],
        metrics={"test_accuracy": 0.5, "test_nll": 1.0, "test_ece": 0.1, "test_brier": 0.6},
        baseline_metrics=baseline_metrics,
        onnx_path=onnx_path,
        onnx_sha256=onnx_sha256,
    )
