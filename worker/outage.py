"""Store outages: a connection-kind database error never fails a job.

Anywhere in a job (a progress write, the cancel poll, ``fail`` itself) such an error
leaves as ``StoreOutage`` and never lets the job's message be acknowledged; tasks.py then
waits, with backoff, until the store answers again (``wait_for_store``, taking no other
message meanwhile), hands the attempt back (``release_attempt``) and the message back
to the broker; the job resumes from its checkpoint.

A full data volume is not an outage (it does not pass by waiting): a disk-full error
(``app.disk_space.is_disk_full``) fails the job (worker/outcomes.py ``fail``).
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app import disk_space
from app.db import ping as ping_store
from app.db import session_scope
from app.settings import Settings
from app.store import Job
from core.statuses import JobStatus
from worker.shutdown import STOPPING

log = logging.getLogger("hetserve.worker")


class StoreOutage(Exception):
    """The store could not be reached: the job must go back to the broker, unharmed.

    ``attempt_counted``: this delivery's start_attempt committed (release_attempt undoes it).
    """

    def __init__(self, job_id: str, attempt_counted: bool):
        super().__init__(f"job {job_id}: the store is unreachable")
        self.job_id, self.attempt_counted = job_id, attempt_counted


def describe(exc: BaseException) -> str:
    """An exception as one line of at most 2000 characters: ``Type: message``."""
    return f"{type(exc).__name__}: {exc}"[:2000]


def is_store_outage(exc: BaseException | None) -> bool:
    """A connection-kind SQLAlchemy error (server gone, refused, connection reset, SQLite
    locked): the store is unreachable for now, not the job wrong. Looks down the chain
    of causes too."""
    if disk_space.is_disk_full(exc):
        return False  # a full volume fails the job (``fail``), never hands it back
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StoreOutage):
            return True
        if isinstance(exc, (OperationalError, InterfaceError)):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def wait_for_store(settings: Settings) -> bool | None:
    """Block until the store answers (backoff 0.5 s doubling up to store_retry_max_s).
    True: it was down and answers again; False: it answered at once (the error was
    probably not an outage: a schema error, say); None: the worker started stopping
    first. The worker takes no other message meanwhile (solo pool, prefetch 1), so
    queued jobs stay queued in the broker."""
    delay, was_down = 0.5, False
    while not STOPPING.is_set():
        try:
            ping_store(settings)
            return was_down
        except Exception as exc:
            log.warning("store unreachable (%s); retrying in %.1f s", describe(exc), delay)
        was_down = True
        STOPPING.wait(delay)
        delay = min(delay * 2, settings.store_retry_max_s)
    return None


def release_attempt(job_id: str, settings: Settings) -> None:
    """Undo this delivery's start_attempt: an outage of the store is not the job's
    fault and must not use up its max_job_attempts. Best effort."""
    try:
        with session_scope(settings) as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts > 0)
                .values(attempts=Job.attempts - 1)
            )
    except Exception as exc:
        log.warning("job %s: could not release the attempt: %s", job_id, describe(exc))
