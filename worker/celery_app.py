"""The Celery application of the training workers (GPU-safe, DESIGN §6).

Run (docs/architecture.md):
    celery -A worker.celery_app:celery_app worker --pool=solo --concurrency=1 -Q train

- pool solo, concurrency 1: one training process per GPU, and no fork after CUDA was
  initialised (celery#3402).
- ``task_acks_late`` + ``task_reject_on_worker_lost`` + prefetch 1: a message is
  acknowledged only when its job ended, so a worker that dies mid-job leaves it for
  another; Redis redelivers after ``visibility_timeout``, set above the job time limit
  so a job still running is never handed out twice (celery#5935).
- Cancellation is cooperative (the training loop reads the job's flag): terminate-style
  revoke would kill a process holding a GPU context.
- The embedded broker (kombu's SQL transport) never redelivers a message whose worker
  died, so in embedded mode (one worker by design) the worker re-sends, once ready, the
  jobs the store still shows as running: they resume from their checkpoints.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_ready

from app.broker import TRAIN_QUEUE, TRAIN_TASK, broker_config
from app.db import session_scope
from app.logs import configure_logging
from app.settings import get_settings
from app.statuses import JobStatus
from app.store import JobStore

log = logging.getLogger("hetserve.worker")

settings = get_settings()

celery_app = Celery("hetserve", include=["worker.tasks"])
celery_app.conf.update(broker_config(settings))
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    worker_pool="solo",
    task_ignore_result=True,  # chord members opt back in (worker/tasks.py)
    task_default_queue=TRAIN_QUEUE,  # chord_unlock and the chord's body included
    task_routes={"hetserve.*": {"queue": TRAIN_QUEUE}},
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    result_expires=7 * 24 * 3600,
)


@setup_logging.connect
def json_logging(**_kwargs) -> None:
    # Connecting this signal stops Celery from installing its own handlers.
    configure_logging(settings.log_level, "worker")


def embedded_broker() -> bool:
    return settings.resolved_broker_url.startswith(("sqla+", "sqlalchemy+", "filesystem"))


@worker_ready.connect
def resend_orphaned_jobs(sender=None, **_kwargs) -> None:
    if not embedded_broker():
        return  # Redis redelivers unacknowledged messages itself
    with session_scope(settings) as session:
        orphans = [job.id for job in JobStore(session).list_by_status(JobStatus.RUNNING)]
    for job_id in orphans:
        log.warning("job %s was running when the last worker stopped: re-sending it", job_id)
        celery_app.send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE)
