"""Deleting a job or a model: what ``DELETE /v1/jobs/{id}`` and ``DELETE /v1/models/{id}``
do. The artifact files a deletion leaves unreferenced are removed by
``app.artifact_release`` (the one place that removes artifact files, under their lock).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.artifact_release import change_then_remove_unreferenced as remove_after_commit
from app.artifacts import ArtifactStore
from app.settings import Settings
from app.store import Alias, Job, JobHistory, JobStore, Model
from core.statuses import TERMINAL_STATUSES

log = logging.getLogger("hetserve.retention")


class JobNotFound(Exception):
    pass


class JobConflict(Exception):
    """The job cannot be deleted now (running, has models, an alias points at one)."""


@dataclass
class DeletedJob:
    job_id: str
    model_ids: list[str]
    artifact_paths: list[str]


class ModelNotFound(Exception):
    pass


class ModelConflict(Exception):
    """An alias points at the model."""


def delete_model(settings: Settings, artifacts: ArtifactStore, model_id: str) -> None:
    """What ``DELETE /v1/models/{id}`` does: the row, then each of its artifact files
    (ONNX, label issues) that no other row refers to. Refused while an alias points at
    it. Raises ``ModelNotFound`` or ``ModelConflict``."""

    def change(session: Session) -> list[str]:
        model = session.get(Model, model_id, with_for_update=True)
        if model is None:
            raise ModelNotFound(f"no model {model_id!r}")
        aliases = list(session.scalars(select(Alias.name).where(Alias.model_id == model.id)))
        if aliases:
            raise ModelConflict(
                f"aliases {aliases} point at model {model.id}: move or delete them first"
            )
        paths = model.artifact_paths
        session.delete(model)
        session.flush()
        return paths

    remove_after_commit(settings, artifacts, change, lambda paths: paths)


def delete_job(
    settings: Settings, artifacts: ArtifactStore, job_id: str, *, models: bool = False
) -> DeletedJob:
    """Delete an ended job, its history rows and its checkpoint folder.

    The job's models stay: a job that has models is refused (``JobConflict``) unless
    ``models`` is true, in which case they go too (refused while an alias points at one),
    and each ONNX file no other row refers to is removed. The job's dataset stays.
    Raises ``JobNotFound``, or ``JobConflict`` for a queued or running job."""

    def change(session: Session) -> DeletedJob:
        JobStore(session).lock(job_id)  # the row lock the worker takes to start or end it
        job = session.get(Job, job_id, populate_existing=True)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if job.status not in TERMINAL_STATUSES:
            raise JobConflict(f"job {job_id} is {job.status}: cancel it first")
        rows = list(session.scalars(select(Model).where(Model.job_id == job_id)))
        if rows and not models:
            raise JobConflict(
                f"job {job_id} has models {[m.id for m in rows]}: delete them first, "
                "or pass models=true to delete them with the job"
            )
        ids = [m.id for m in rows]
        aliases = (
            list(session.execute(select(Alias.name, Alias.model_id).where(Alias.model_id.in_(ids))))
            if ids
            else []
        )
        if aliases:
            names = sorted(name for name, _ in aliases)
            raise JobConflict(
                f"aliases {names} point at models of job {job_id}: move or delete them first"
            )
        paths = [p for m in rows for p in m.artifact_paths]
        for model in rows:
            session.delete(model)
        session.flush()  # the models (they refer to the job) before the job
        session.execute(delete(JobHistory).where(JobHistory.job_id == job_id))
        session.delete(job)
        session.flush()
        return DeletedJob(job_id, ids, paths)

    deleted, _ = remove_after_commit(settings, artifacts, change, lambda d: d.artifact_paths)
    shutil.rmtree(artifacts.checkpoint_dir(job_id), ignore_errors=True)
    log.info("job %s deleted (models %s)", job_id, deleted.model_ids, extra={"job_id": job_id})
    return deleted
