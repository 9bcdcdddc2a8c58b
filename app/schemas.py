"""Boundary models of the HTTP API (DESIGN §5): what clients send and get back.

The job spec's head/backbone/train parts repeat the bounds of models/spec.py (the app
may not import models); tests/app/test_jobs_api.py checks the two stay in step, and the
worker validates the stored spec again with models.spec.RunSpec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TEMPERATURE_GRID = (0.5, 1.0, 1.5, 2.0, 3.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HeadSpec(_Strict):
    kind: Literal["het", "softmax"] = "het"
    num_factors: int = Field(4, ge=0, le=256, description="R, low-rank factors; 0 = diagonal only")
    temperature: float | Literal["auto", "learned"] = Field(
        1.0, description='a fixed tau > 0, "auto" (grid, best validation NLL) or "learned"'
    )
    temperature_grid: list[float] = Field(
        default_factory=lambda: list(TEMPERATURE_GRID), min_length=1, max_length=16
    )
    temperature_bounds: tuple[float, float] = (0.3, 3.0)
    train_mc_samples: int = Field(200, ge=1, le=100_000, description="S while training")
    eval_mc_samples: int = Field(1000, ge=1, le=100_000, description="S for evaluation and serving")
    parameter_efficient: bool = False
    share_samples_across_batch: bool = True

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value):
        if isinstance(value, float) and not value > 0:
            raise ValueError("a fixed temperature must be > 0")
        return value

    @field_validator("temperature_bounds")
    @classmethod
    def _ordered_bounds(cls, value):
        if not 0 < value[0] < value[1]:
            raise ValueError("temperature_bounds must be (lo, hi) with 0 < lo < hi")
        return value

    @field_validator("temperature_grid")
    @classmethod
    def _positive_grid(cls, value):
        if any(not t > 0 for t in value):
            raise ValueError("every grid temperature must be > 0")
        if len(set(value)) != len(value):
            raise ValueError("grid temperatures must be distinct")
        return value


class BackboneSpec(_Strict):
    kind: Literal["mlp", "cnn", "resnet18"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=16_384)]] = Field(
        default_factory=lambda: [256, 256], max_length=16, description="MLP hidden widths"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    augment: bool = Field(True, description="images only: random crop with padding")
    hflip: bool = Field(False, description="images only: random horizontal flip (wrong for digits)")


class TrainSpec(_Strict):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_fraction: float = Field(0.1, gt=0, lt=1, description="used when the dataset has no x_val")


JOB_SPEC_EXAMPLE = {
    "dataset_id": "3f0c9d7e1b2a4c5d8e9f0a1b2c3d4e5f",
    "task": "multiclass",
    "head": {
        "kind": "het",
        "num_factors": 4,
        "temperature": "auto",
        "train_mc_samples": 200,
        "eval_mc_samples": 1000,
        "parameter_efficient": False,
    },
    "backbone": {"kind": "mlp"},
    "train": {"epochs": 30, "batch_size": 128, "lr": 0.001, "seed": 0, "device": "auto"},
    "compare_baseline": True,
}


class JobSpec(_Strict):
    """POST /v1/jobs body."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [JOB_SPEC_EXAMPLE]}
    )

    dataset_id: str = Field(min_length=1, max_length=64)
    task: Literal["multiclass", "multilabel"] | None = Field(
        None, description="default: the dataset's task; must match it when given"
    )
    head: HeadSpec = Field(default_factory=HeadSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    compare_baseline: bool = Field(
        False, description="also train the softmax baseline on the same data and budget"
    )


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
                    "status": "succeeded",
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
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict
    progress: Progress
    metrics: dict | None = None
    history: list[dict] | None = Field(
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
