"""Fault tests: a real Celery worker process against stores the test can break (the
PostgreSQL outage goes through ``tests.support.tcp_proxy.TcpProxy``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from app.artifacts import ArtifactStore
from app.db import migrate, session_scope
from app.settings import Settings
from app.store import DatasetStore, JobStore
from app.uploads import validate_arrays
from core.statuses import TERMINAL_STATUSES
from tests.support.e2e_jobs import SLOW as E2E_SLOW
from tests.support.processes import stop_process
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SLOW = E2E_SLOW | {"task": "multiclass"}  # ~0.4 s per epoch on one core


def add_dataset(settings: Settings, n: int = 2000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = (rng.normal(size=(n, 8)) + 1.5 * y[:, None] * np.eye(8)[0]).astype(np.float32)
    ds = validate_arrays({"x_train": x, "y_train": y}, ["neg", "pos"])
    canonical = ds.to_npz_bytes()
    relative, sha256 = ArtifactStore(settings.data_dir).put_bytes(canonical, ".npz")
    with session_scope(settings) as session:
        row = DatasetStore(session).add(
            name="fault",
            format="npz",
            task=ds.task,
            **ds.counts,
            input_shape=ds.input_shape,
            num_classes=len(ds.class_names),
            class_names=ds.class_names,
            sha256=sha256,
            size_bytes=len(canonical),
            artifact_path=relative,
        )
        return row.id


def add_job(settings: Settings, dataset_id: str, epochs: int, status: str | None = None) -> str:
    spec = SLOW | {"train": SLOW["train"] | {"epochs": epochs}, "dataset_id": dataset_id}
    with session_scope(settings) as session:
        job = JobStore(session).create(dataset_id, spec)
        if status is not None:
            job.status = status
        return job.id


def base_env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    return (
        env
        | {
            "HETSERVE_DATA_DIR": str(data_dir),
            "HETSERVE_CANCEL_POLL_INTERVAL_S": "0.2",
            "HETSERVE_BROKER_POLLING_INTERVAL_S": "0.1",
            "HETSERVE_STORE_RETRY_MAX_S": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        | extra
    )


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        **{
            k.removeprefix("HETSERVE_").lower(): v
            for k, v in env.items()
            if k.startswith("HETSERVE_")
        }
    )


def start_worker(env: dict[str, str], log: Path, wait_ready: bool = True) -> subprocess.Popen:
    argv = [
        str(BIN / "celery"), "-A", "worker.celery_app:celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", "train", "--loglevel=INFO",
        "--hostname", f"fault-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    with open(log, "wb") as out:
        worker = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready():
        if worker.poll() is not None:
            raise AssertionError(f"worker exited {worker.returncode}: {log.read_text()[-3000:]}")
        return " ready." in log.read_text(errors="replace")

    if wait_ready:
        wait_until(ready, 120, "the worker to be ready")
    return worker


def stop(worker: subprocess.Popen) -> None:
    stop_process(worker, 20)


def prepare(env: dict[str, str]) -> Settings:
    settings = settings_of(env)
    migrate(settings)
    return settings


def wait_all_ended(settings: Settings, job_ids: list[str], timeout: float = 120) -> None:
    """Until every job in ``job_ids`` has a terminal status (AssertionError after ``timeout``)."""

    def all_ended():
        with session_scope(settings) as session:
            store = JobStore(session)
            return all(store.get(j).status in TERMINAL_STATUSES for j in job_ids)

    wait_until(all_ended, timeout, "every job to end")
