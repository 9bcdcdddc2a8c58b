"""Boundary models of the HTTP API: what clients send and get back.

The job spec's head/backbone/train parts are core.spec's classes themselves (torch
free), so the API and the worker validate a spec with the same rules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from core.spec import RunParts, RunSpec, Task
from core.statuses import JobStatus

JOB_SPEC_EXAMPLE: JsonDict = {
    "dataset_id": "3f0c9d7e1b2a4c5d8e9f0a1b2c3d4e5f",
    "task": "multiclass",
    "head": {
        "kind": "het",
        "num_factors": 4,
        "temperature": "auto",
        "train_mc_samples": 200,
        "eval_mc_samples": 512,
        "parameter_efficient": False,
    },
    "backbone": {"kind": "mlp"},
    "train": {"epochs": 30, "batch_size": 128, "lr": 0.001, "seed": 0, "device": "auto"},
    "compare_baseline": True,
}


class JobSpec(RunParts):
    """POST /v1/jobs body: the run parts of core.spec plus what only the service needs."""

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_SPEC_EXAMPLE]})

    dataset_id: str = Field(min_length=1, max_length=64)
    task: Task | None = Field(
        None, description="default: the dataset's task; must match it when given"
    )
    compare_baseline: bool = Field(
        False, description="also train the softmax baseline on the same data and budget"
    )

    def run_spec(self, default_task: str) -> RunSpec:
        """The run to train: this spec's parts, task filled in from the dataset if unset."""
        return RunSpec(
            task=self.task or default_task, head=self.head, backbone=self.backbone, train=self.train
        )


class DatasetReference(BaseModel):
    """POST /v1/datasets as JSON: a dataset that stays where it is."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(
        ...,
        max_length=4096,
        description="file:///abs/path (or s3://bucket/prefix, with the s3 extra) of an"
        " image-folder tree (train/<class>/*.png|jpg, optional val/ test/) or of a .npz,"
        " under HETSERVE_DATASET_ROOTS",
    )
    name: str | None = Field(None, max_length=255, description="display name; default the uri")
    image_size: int = Field(
        32, ge=4, le=512, description="image folders: images are resized to this square size"
    )
    grayscale: bool = Field(False, description="image folders: decode as one channel")


class DatasetLineage(BaseModel):
    """Where a corrected dataset came from (POST /v1/datasets/{id}/corrections...)."""

    parent_dataset_id: str
    rule: str = Field(
        description='"relabel" or "drop" (the top N flagged rows of a model\'s findings), '
        'or "csv" (the corrections a person uploaded)'
    )
    model_id: str | None = Field(None, description="the model whose findings were applied")
    top: int | None = Field(None, description="N: how many flagged rows were asked for")
    csv_sha256: str | None = Field(None, description="the SHA-256 of the uploaded CSV")
    num_relabelled: int = Field(description="training rows given another label")
    num_dropped: int = Field(description="training rows left out")


class DatasetOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "3f0c9d7e1b2a4c5d8e9f0a1b2c3d4e5f",
                    "name": "digits.npz",
                    "format": "npz",
                    "task": "multiclass",
                    "num_train": 1200,
                    "num_val": 200,
                    "num_test": 397,
                    "input_shape": [64],
                    "num_classes": 10,
                    "class_names": [str(i) for i in range(10)],
                    "sha256": "9b1c…",
                    "size_bytes": 812345,
                    "created_at": "2026-11-25T21:30:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    format: str
    task: str
    num_train: int
    num_val: int
    num_test: int
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    sha256: str
    size_bytes: int
    created_at: datetime
    lineage: DatasetLineage | None = Field(
        None, description="a corrected dataset's parent and corrections; null otherwise"
    )


class Progress(BaseModel):
    epoch: int = 0
    epochs: int = 0
    fraction: float = 0.0
    phase: str | None = Field(
        None, description='what is training: "model", "baseline" or "tau=1.5"'
    )


class JobOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "c2a7e0d4b5f64f1e9a8b7c6d5e4f3a2b",
                    "dataset_id": "3f0c9d7e1b2a4c5d8e9f0a1b2c3d4e5f",
                    "status": JobStatus.SUCCEEDED,
                    "spec": JOB_SPEC_EXAMPLE,
                    "progress": {"epoch": 30, "epochs": 30, "fraction": 1.0, "phase": "baseline"},
                    "metrics": {
                        "model": {
                            "test_accuracy": 0.845,
                            "test_nll": 0.468,
                            "test_ece": 0.031,
                            "test_brier": 0.22,
                        },
                        "baseline": {
                            "test_accuracy": 0.764,
                            "test_nll": 0.561,
                            "test_ece": 0.052,
                            "test_brier": 0.31,
                        },
                    },
                    "history": [
                        {"epoch": 1, "phase": "model", "train_loss": 1.9, "val": {"nll": 1.4}}
                    ],
                    "model_id": "8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a",
                    "baseline_model_id": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d",
                    "error": None,
                    "cancel_requested": False,
                    "attempts": 1,
                    "created_at": "2026-11-25T21:30:00Z",
                    "started_at": "2026-11-25T21:30:01Z",
                    "finished_at": "2026-11-25T21:31:12Z",
                }
            ]
        },
    )

    id: str
    dataset_id: str
    status: JobStatus
    spec: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = Field(
        None, description="one entry per trained epoch (GET /v1/jobs/{id} only)"
    )
    model_id: str | None = None
    baseline_model_id: str | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
