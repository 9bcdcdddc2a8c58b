"""A job's units: the training runs it is made of, and how a chord unit reports back.

Each unit is a models.train run with its own checkpoint folder
``data_dir/checkpoints/<job_id>/<unit.folder>``:

- role ``"model"``: the requested head; ``"baseline"``: the softmax baseline on the
  same data and budget (``compare_baseline``);
- ``temperature: "auto"``: one ``"candidate"`` unit per grid temperature instead of
  ``"model"``; models.train.select_temperature picks the best validation NLL.

A unit's ``phase`` ("model", "baseline", "tau=1.5") is how progress and history name
it over HTTP; ``to_message`` / ``from_message`` are its form in a Celery message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.spec import RunSpec, temperature_label
from core.statuses import JobStatus

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
        if self.temperature is not None:  # a candidate
            return f"tau={temperature_label(self.temperature)}"
        return self.role

    @property
    def swept_temperature(self) -> float:
        """A candidate's grid temperature."""
        if self.temperature is None:
            raise ValueError(f"the {self.role} unit is not a candidate of the sweep")
        return self.temperature

    @property
    def folder(self) -> str:
        return self.phase.replace("=", "_")

    def spec(self, run_spec: RunSpec) -> RunSpec:
        if self.role == "baseline":
            return run_spec.as_baseline()
        if self.temperature is not None:  # a candidate
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


class UnitOutcome:
    """The ``status`` of a unit's summary."""

    TRAINED = "trained"
    SKIPPED = "skipped"
    CANCELLED = JobStatus.CANCELLED.value
    FAILED = JobStatus.FAILED.value


def unit_summary(unit: Unit, status: str, metrics: dict | None = None, error=None) -> dict:
    """What a chord unit returns: {"unit", "status" (a UnitOutcome), "val_nll",
    "val_accuracy", "error"}."""
    metrics = metrics or {}
    return {
        "unit": unit.to_message(),
        "status": status,
        "val_nll": metrics.get("val_nll"),
        "val_accuracy": metrics.get("val_accuracy"),
        "error": error,
    }
