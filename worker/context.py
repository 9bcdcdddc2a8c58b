"""What a job's units read once from the store, and where a unit keeps its files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import DatasetStore, JobStore
from core.dataset_files import ArrayDataset, load_dataset
from core.dataset_items import REFERENCE_FORMATS
from core.manifest import ImageFiles, open_manifest
from core.spec import RunSpec, validate_run
from models.backbones import resolve_weights
from worker.units import Unit, job_units


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


def load_context(job_id: str, settings: Settings, for_training: bool = True) -> JobContext:
    """The job's spec, dataset and units. ``for_training``: also check the pretrained
    weights file the training will read (finish_units, which only exports, does not)."""
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} no longer exists")
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
    data = open_manifest(
        json.loads(ctx.dataset_path.read_text()),
        settings.s3_endpoint_url,
        settings.dataset_root_list,  # every open confined to them again
    )
    for x in (data.x_train, data.x_val, data.x_test):
        if isinstance(x, ImageFiles):
            x.num_workers = settings.loader_workers
    return data


def unit_checkpoint_dir(settings: Settings, job_id: str, unit: Unit) -> Path:
    path = ArtifactStore(settings.data_dir).checkpoint_dir(job_id) / unit.folder
    path.mkdir(parents=True, exist_ok=True)
    return path
