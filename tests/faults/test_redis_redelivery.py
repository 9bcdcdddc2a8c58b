"""Redis: the message of a worker killed outright (SIGKILL) goes back to the queue once
the visibility timeout has passed, and a worker already running picks it up within
about ``REDIS_RESTORE_INTERVAL_S`` after that (kombu's default scans for such messages
only every tenth restore call: ~100 s late)."""

from __future__ import annotations

import time
import uuid

import pytest

from app import broker
from app.broker import REDIS_RESTORE_INTERVAL_S
from app.db import session_scope
from app.store import JobStore
from core.statuses import TERMINAL_STATUSES, JobStatus
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.waiting import wait_until
from tests.support.worker_process import add_dataset, add_job, base_env, prepare, start_worker, stop

VISIBILITY_S = 22
EPOCHS = 8


@pytest.mark.slow
def test_a_sigkilled_workers_job_goes_to_a_running_worker_soon_after_the_visibility_timeout(
    tmp_path,
):
    with scratch_redis_postgres(f"redeliver_{uuid.uuid4().hex[:8]}") as stores:
        env = base_env(
            tmp_path / "data",
            stores
            | {
                "HETSERVE_JOB_TIME_LIMIT_S": str(VISIBILITY_S - 2),
                "HETSERVE_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
            },
        )
        settings = prepare(env)
        job_id = add_job(settings, add_dataset(settings, n=600), EPOCHS)

        def job():
            with session_scope(settings) as session:
                return JobStore(session).get(job_id)

        first = start_worker(env, tmp_path / "first.log")
        second = None
        try:
            broker.send_train_job(settings, job_id)
            wait_until(lambda: len(history_rows(settings, job_id)) >= 1, 120, "an epoch")
            # The second worker is idle and running before the kill: nothing at its start
            # can pick the message up early (a starting worker scans at once).
            second = start_worker(env, tmp_path / "second.log")
            first.kill()
            first.wait()
            killed = time.monotonic()
            assert job().attempts == 1
            wait_until(lambda: job().attempts >= 2, 240, "the job to be delivered again")
            waited = time.monotonic() - killed
            wait_until(lambda: job().status in TERMINAL_STATUSES, 120, "the job to end")
        finally:
            first.kill()
            first.wait()
            if second is not None:
                stop(second)
        assert job().status == JobStatus.SUCCEEDED, job().error
        assert waited < VISIBILITY_S + REDIS_RESTORE_INTERVAL_S + 10, waited


def history_rows(settings, job_id) -> list:
    with session_scope(settings) as session:
        return JobStore(session).history(job_id)
