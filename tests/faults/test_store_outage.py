"""A PostgreSQL outage of ~5 s while a worker runs one job and two wait on Redis: no
message is lost, no job fails or is stranded, each job succeeds exactly once and
resumes from its checkpoint (every epoch in its history once)."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.engine import make_url

from app import broker
from app.db import session_scope
from app.store import JobStore, ModelStore
from core.statuses import JobStatus
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from tests.support.worker_process import (
    add_dataset,
    add_job,
    base_env,
    prepare,
    start_worker,
    stop,
    wait_all_ended,
)

OUTAGE_S = 5
EPOCHS = {"first": 10, "queued": 3}


def test_store_outage_mid_job_loses_no_job(tmp_path):
    with scratch_redis_postgres(f"outage_{uuid.uuid4().hex[:8]}") as stores:
        direct_url = stores["HETSERVE_DATABASE_URL"]
        direct = base_env(tmp_path / "data", stores)
        settings = prepare(direct)
        proxy = TcpProxy(("127.0.0.1", make_url(direct_url).port or 5432))
        proxy.restore()
        proxied_url = make_url(direct_url).set(host="127.0.0.1", port=proxy.port)
        worker_env = direct | {
            "HETSERVE_DATABASE_URL": proxied_url.render_as_string(hide_password=False),
            "HETSERVE_SWEEP_INTERVAL_S": "0",  # the sweeper must not be what saves them
        }
        dataset = add_dataset(settings)
        ids = [add_job(settings, dataset, EPOCHS["first"])]
        ids += [add_job(settings, dataset, EPOCHS["queued"]) for _ in range(2)]
        for job_id in ids:
            broker.send_train_job(settings, job_id)
        worker = start_worker(worker_env, tmp_path / "worker.log")
        try:

            def first_mid_way():
                with session_scope(settings) as session:
                    store = JobStore(session)
                    return store.get(ids[0]).status == "running" and len(store.history(ids[0])) >= 2

            wait_until(first_mid_way, 90, "the first job's second epoch")
            proxy.cut()
            time.sleep(OUTAGE_S)
            proxy.restore()

            wait_all_ended(settings, ids)
        finally:
            stop(worker)
            proxy.cut()
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "handing the message back" in log, log[-3000:]
        with session_scope(settings) as session:
            jobs, models = JobStore(session), ModelStore(session)
            for job_id, epochs in zip(ids, [EPOCHS["first"], *[EPOCHS["queued"]] * 2], strict=True):
                job = jobs.get(job_id)
                assert job.status == JobStatus.SUCCEEDED, (job.status, job.error)
                assert job.attempts == 1, "a store outage used up an attempt"
                assert models.count_for_job(job_id) == 1
                history = [h.epoch for h in jobs.history(job_id)]
                assert sorted(history) == list(range(1, epochs + 1)), history
