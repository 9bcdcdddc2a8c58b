"""What a training run is: the job spec of DESIGN §5 as pydantic models.

Pure pydantic (no torch import) so the worker can validate a stored job cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TEMPERATURE_GRID = (0.5, 1.0, 1.5, 2.0, 3.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeadSpec(_Strict):
    kind: Literal["het", "softmax"] = "het"
    num_factors: int = Field(4, ge=0, le=256, description="R, low-rank factors; 0 = diagonal only")
    temperature: float | Literal["auto", "learned"] = Field(
        1.0, description='a fixed tau > 0, "auto" (grid, best validation NLL) or "learned"'
    )
    temperature_grid: list[float] = Field(
        default_factory=lambda: list(TEMPERATURE_GRID), min_length=1
    )
    temperature_bounds: tuple[float, float] = (0.3, 3.0)
    train_mc_samples: int = Field(200, ge=1, le=100_000)
    eval_mc_samples: int = Field(1000, ge=1, le=100_000)
    parameter_efficient: bool = False
    share_samples_across_batch: bool = True

    @model_validator(mode="after")
    def _temperatures_positive(self) -> HeadSpec:
        lo, hi = self.temperature_bounds
        if not 0 < lo < hi:
            raise ValueError(
                f"temperature_bounds must satisfy 0 < lo < hi, got {self.temperature_bounds}"
            )
        if isinstance(self.temperature, float) and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if any(not t > 0 for t in self.temperature_grid):
            raise ValueError(f"temperature_grid values must be > 0, got {self.temperature_grid}")
        if self.temperature == "learned" and not lo < 1.0 < hi:
            raise ValueError(
                f"a learned temperature starts at 1.0, which must lie inside {self.temperature_bounds}"
            )
        return self


class BackboneSpec(_Strict):
    kind: Literal["mlp", "cnn", "resnet18"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="MLP hidden widths")
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


class RunSpec(_Strict):
    """One model's training run: the job spec minus what only the service needs."""

    task: Literal["multiclass", "multilabel"] = "multiclass"
    head: HeadSpec = Field(default_factory=HeadSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    def with_temperature(self, tau: float) -> RunSpec:
        return self.model_copy(update={"head": self.head.model_copy(update={"temperature": tau})})

    def as_baseline(self) -> RunSpec:
        return self.model_copy(update={"head": HeadSpec(kind="softmax")})
