"""A benchmark run's record: every ratio its tables print, flat, with the machine it ran on.

    {"bench": "export_speed", "machine": {"date", "host", "boot_id", "cpu", "speed"},
     "ratios": {"K=10 B=1: graph / noise in": 1.07, ...}, ...the bench's own figures}

Why: a table in the docs states each ratio's spread over runs, and "does it reproduce?"
is then a question a script answers (bench/reproduce.py compares a fresh run's ratios
with the spread of the recorded runs), not one read off two tables by eye. ``boot_id``
tells VMs apart (a fresh VM boots afresh; the host name may repeat); ``speed`` is
bench/calibrate.py's reading at the start of the run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import UTC, datetime
from pathlib import Path

from bench import calibrate

# The vector extensions that change which kernels the libraries pick: TensorFlow turns
# oneDNN on by default only where one of the last four is present (bench/head_speed.py's
# docstring), and onnxruntime and torch choose AVX-512 kernels where they can.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def describe_cpu(cpuinfo: str | None = None) -> str:
    """``AMD EPYC (family 25 model 1; avx2), 2 cores visible``: the model name alone
    hides the generation, which moves ratios between VMs."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        flags = set(fields.get("flags", "").split())
        present = [f for f in VECTOR_FLAGS if f in flags] or ["no AVX2"]
        cpu += f" (family {fields['cpu family']} model {fields.get('model', '?')}; "
        cpu += f"{' '.join(present)})"
    return f"{cpu}, {os.cpu_count()} cores visible"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def machine(speed: dict[str, float] | None = None) -> dict:
    """Where and when: measures the machine's speed now unless given it."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "cpu": describe_cpu(),
        "speed": speed if speed is not None else calibrate.measure(),
    }


def write(path: Path, bench: str, machine: dict, ratios: dict[str, float], **figures) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": bench, "machine": machine, "ratios": ratios, **figures}
    path.write_text(json.dumps(record, indent=1))


def read(path: Path) -> dict:
    record = json.loads(path.read_text())
    if not isinstance(record.get("ratios"), dict) or "machine" not in record:
        raise ValueError(f"{path}: not a run record (no 'ratios' / 'machine')")
    return record
