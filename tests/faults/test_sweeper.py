"""Stranded jobs (the store says queued/running, no broker message holds them) are
re-queued by the worker's sweeper, at start and periodically, on both brokers; a job
whose message waits in the queue is not sent twice. And a second embedded worker on
the same data folder refuses to start."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from app import broker
from app.db import session_scope
from app.store import JobStore, ModelStore
from core.statuses import JobStatus
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.worker_process import (
    add_dataset,
    add_job,
    base_env,
    prepare,
    start_worker,
    stop,
    wait_all_ended,
)


@pytest.mark.parametrize("backend", ["embedded", "redis-postgres"])
def test_sweeper_requeues_stranded_jobs(backend, tmp_path):
    stores_cm = (
        scratch_redis_postgres(f"sweep_{uuid.uuid4().hex[:8]}")
        if backend == "redis-postgres"
        else contextlib.nullcontext({})
    )
    with stores_cm as stores:
        env = base_env(
            tmp_path / "data",
            stores | {"HETSERVE_SWEEP_GRACE_S": "0", "HETSERVE_SWEEP_INTERVAL_S": "2"},
        )
        settings = prepare(env)
        dataset = add_dataset(settings, n=400)
        # Stranded before the worker starts: no message for either.
        ids = [
            add_job(settings, dataset, 2, status=JobStatus.RUNNING),
            add_job(settings, dataset, 2),
        ]
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            if backend == "embedded":
                second = start_worker(env, tmp_path / "second.log", wait_ready=False)
                assert second.wait(timeout=90) != 0
                assert "another embedded worker" in (tmp_path / "second.log").read_text()
            # Stranded while it runs (the periodic sweep), and one sent normally.
            ids.append(add_job(settings, dataset, 2))
            ids.append(add_job(settings, dataset, 2))
            broker.send_train_job(settings, ids[-1])

            wait_all_ended(settings, ids)
        finally:
            stop(worker)
        with session_scope(settings) as session:
            jobs, models = JobStore(session), ModelStore(session)
            for job_id in ids:
                job = jobs.get(job_id)
                assert job.status == JobStatus.SUCCEEDED, (job.status, job.error)
                assert models.count_for_job(job_id) == 1
                assert sorted(h.epoch for h in jobs.history(job_id)) == [1, 2]
            assert jobs.get(ids[-1]).attempts == 1, "a job with a message was sent twice"
        assert (tmp_path / "worker.log").read_text().count("no broker message holds it") == 3
