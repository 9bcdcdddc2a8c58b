"""The settings the training code reads (``HETSERVE_`` environment variables), in core so
that models/ reads them without importing the service: the service's ``Settings``
(app/settings.py) inherits them, so they are listed, validated and documented with every
other setting (.env.example), and a worker, a CLI run or a benchmark reads the same values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HetKernelMode = Literal["auto", "torch", "kernel"]


class KernelSettings(BaseSettings):
    """The HET head's fused CPU kernel (models/het_kernel.py)."""

    model_config = SettingsConfigDict(env_prefix="HETSERVE_", env_file=None, extra="ignore")

    het_kernel: HetKernelMode = Field(
        "auto",
        description="the HET head's fused CPU kernel: auto (built at first use, the torch path"
        " if it cannot be), torch (never), kernel (a failed build is an error)",
    )
    kernel_cache: Path | None = Field(
        None,
        description="where the built kernel library lives; unset: ~/.cache/hetserve/kernels,"
        " else <data_dir>/cache/kernels, else a temporary directory (the first writable one)",
    )

    @field_validator("het_kernel", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        """``KERNEL``, `` torch `` and an empty value (auto) read as before."""
        if isinstance(value, str):
            value = value.strip().lower() or "auto"
            if value not in ("auto", "torch", "kernel"):
                raise ValueError(
                    f"HETSERVE_HET_KERNEL must be auto, torch or kernel, got {value!r}"
                )
        return value


_current: dict[tuple[str | None, ...], KernelSettings] = {}


def kernel_settings() -> KernelSettings:
    """The kernel settings now: read again when one of their variables changed (a benchmark
    or a test switches the kernel within one process), else the values read last time,
    since the kernel is looked up on every forward pass."""
    key = tuple(os.environ.get(f"HETSERVE_{name.upper()}") for name in KernelSettings.model_fields)
    if key not in _current:
        _current.clear()
        _current[key] = KernelSettings()
    return _current[key]
