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


def describe_cpu() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
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
