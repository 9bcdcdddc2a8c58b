"""Re-queue stranded jobs: the store says ``queued`` or ``running`` but no broker message
holds the job, so no worker will ever run it (a message acknowledged by a worker that
could not write the outcome, a worker of the embedded broker that died, a message
lost with a broker's data).

"Held" means some message on the train queue names the job id: waiting in the queue,
delivered and unacknowledged (Redis keeps those in its ``unacked`` hash until the
worker acknowledges, or redelivers them after the visibility timeout when it died), or
being run by this very worker (``worker.shutdown.HELD_HERE``). The embedded broker never
redelivers a message whose worker died, and only one embedded worker runs per data
folder (celery_app takes a lock on it), so there only waiting (visible) messages and
this worker's own count.

The broker is read twice, a second apart, and a job counts as stranded only if
neither read saw it (a message moving between the queue and the unacked hash, or being
handed back, is missed by one read at most). A queued job must also be older than
``sweep_grace_s`` (the API commits the row before it sends the message). One sweep at
a time over all workers of a PostgreSQL store (an advisory lock).

Runs when the worker is ready and then every ``sweep_interval_s`` (a daemon thread).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from datetime import timedelta

from sqlalchemy import create_engine, select, text

from app.broker import TRAIN_QUEUE, TRAIN_TASK
from app.db import session_scope
from app.settings import Settings
from app.store import Job, utcnow
from core.statuses import JobStatus
from worker.outage import describe
from worker.shutdown import HELD_HERE, STOPPING

log = logging.getLogger("hetserve.worker")

JOB_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
SWEEP_LOCK_KEY = 0x6865747377656570  # "hetsweep"
REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue names per priority
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
SECOND_LOOK_S = 1.0


def job_ids_in(payload: str | bytes) -> set[str]:
    """Job ids a broker message names: in its headers (argsrepr) or its base64 body
    (train_job/train_unit args, a chord callback's args)."""
    raw = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    found = set(JOB_ID.findall(raw))
    try:
        stack = [json.loads(raw)]
    except ValueError:
        return found
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            body = item.get("body")
            if isinstance(body, str):
                try:
                    found |= set(JOB_ID.findall(base64.b64decode(body).decode(errors="replace")))
                except ValueError:
                    pass
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def embedded(settings: Settings) -> bool:
    return settings.resolved_broker_url.startswith(("sqla+", "sqlalchemy+", "filesystem"))


def broker_payloads(settings: Settings, startup: bool = False) -> list[str | bytes] | None:
    """Every message of the train queue, waiting or delivered and unacknowledged; None
    for a broker this cannot read (then nothing is swept). Embedded, at startup: the
    waiting ones only (the delivered ones belonged to the worker that held the data
    folder's lock before this one, and are lost with it)."""
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        prefix = settings.broker_key_prefix or ""
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        try:
            payloads: list = []
            for pri in REDIS_PRIORITY_STEPS:
                queue = TRAIN_QUEUE if not pri else f"{TRAIN_QUEUE}{REDIS_PRIORITY_SEP}{pri}"
                payloads += client.lrange(prefix + queue, 0, -1)
            payloads += client.hvals(prefix + "unacked")
            return payloads
        finally:
            client.close()
    if url.startswith(("sqla+", "sqlalchemy+")):
        engine = create_engine(url.split("+", 1)[1])
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT m.payload FROM kombu_message m JOIN kombu_queue q "
                        "ON m.queue_id = q.id WHERE q.name = :queue"
                        + (" AND m.visible" if startup else "")
                    ),
                    {"queue": TRAIN_QUEUE},
                )
                return [row[0] for row in rows]
        except Exception as exc:  # no table yet: nothing was ever sent
            if "no such table" in str(exc):
                return []
            raise
        finally:
            engine.dispose()
    return None


def held_job_ids(settings: Settings, startup: bool = False) -> set[str] | None:
    payloads = broker_payloads(settings, startup)
    if payloads is None:
        return None
    held = set(HELD_HERE)
    for payload in payloads:
        held |= job_ids_in(payload)
    return held


def sweep(settings: Settings, send, startup: bool = False) -> list[str]:
    """Re-queue the stranded jobs with ``send(job_id)``; return their ids."""
    with session_scope(settings) as session:
        if session.get_bind().dialect.name == "postgresql":
            got = session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY}
            )
            if not got:
                return []  # another worker is sweeping
        candidates = open_jobs(session, settings)
        if not candidates:
            return []
        first = held_job_ids(settings, startup)
        if first is None:
            log.info("sweeper: cannot read this broker's queue; skipped")
            return []
        time.sleep(SECOND_LOOK_S)
        second = held_job_ids(settings, startup) or set()
        # Read the store after the broker: a job that ended meanwhile is left alone.
        session.expire_all()
        stranded = [j for j in open_jobs(session, settings) if j in candidates]
        stranded = [j for j in stranded if j not in first and j not in second]
        for job_id in stranded:
            log.warning("job %s is %s but no broker message holds it: re-queuing it", job_id,
                        candidates[job_id])  # fmt: skip
            send(job_id)
    return stranded


def open_jobs(session, settings: Settings) -> dict[str, str]:
    """Ids of queued jobs older than the grace, and of every running job → status."""
    cutoff = utcnow() - timedelta(seconds=settings.sweep_grace_s)
    rows = session.execute(
        select(Job.id, Job.status, Job.created_at).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    )
    return {
        job_id: status
        for job_id, status, created in rows
        if status == JobStatus.RUNNING or created <= cutoff
    }


def start(settings: Settings, send) -> threading.Thread:
    """Sweep now, then every sweep_interval_s until the worker stops."""

    def loop() -> None:
        startup = True
        while not STOPPING.is_set():
            try:
                sweep(settings, send, startup=startup)
                startup = False
            except Exception as exc:  # a store or broker outage: try again next time
                log.warning("sweeper: %s", describe(exc))
            if settings.sweep_interval_s <= 0 or STOPPING.wait(settings.sweep_interval_s):
                return

    thread = threading.Thread(target=loop, name="hetserve-sweeper", daemon=True)
    thread.start()
    return thread


def send_train_job(app, job_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE)
