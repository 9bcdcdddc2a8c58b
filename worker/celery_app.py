"""The Celery application of the training workers (GPU-safe: no fork after CUDA, one process per GPU).

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
  died. In embedded mode only one worker runs per data folder: it takes an exclusive
  lock (``fcntl.flock``) on ``data_dir/worker.lock`` and a second one exits at once
  with a message saying so (two would train the same running job twice).
- The sweeper (worker/sweeper.py), on every broker: once ready and then every
  ``sweep_interval_s``, re-queues the jobs the store shows as queued or running that no
  broker message holds; they resume from their checkpoints. In embedded mode the
  first sweep re-sends every running job (its worker, the previous holder of the lock,
  is gone).
"""

from __future__ import annotations

import fcntl
import logging
import os

# torch's OpenMP threads spin while they wait for work; on cores shared with other
# processes (loader processes, other services) the spinning made training steps 2-4x
# slower. libgomp reads this once, when torch loads: so here, before anything imports it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from celery import Celery  # noqa: E402
from celery.signals import setup_logging, worker_init, worker_ready  # noqa: E402

from app.broker import TRAIN_QUEUE, broker_config  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.settings import get_settings  # noqa: E402

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


_data_dir_lock: int | None = None  # the open lock file, held for the process's life


class AnotherEmbeddedWorker(SystemExit):
    pass


def lock_data_dir(data_dir) -> int:
    """Take the embedded worker's exclusive lock on data_dir; exit if another has it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "worker.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AnotherEmbeddedWorker(
            f"another embedded worker (pid {holder}) already runs on {data_dir.resolve()} "
            f"(it holds {path}): with the embedded broker only one worker may run per data "
            "folder; use Redis and PostgreSQL for several workers (docs/deploy.md)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@worker_init.connect
def one_embedded_worker(sender=None, **_kwargs) -> None:
    global _data_dir_lock
    if embedded_broker() and _data_dir_lock is None:
        try:
            _data_dir_lock = lock_data_dir(settings.data_dir)
        except AnotherEmbeddedWorker as exc:
            log.error("%s", exc)
            raise


@worker_ready.connect
def start_sweeper(sender=None, **_kwargs) -> None:
    from worker import sweeper

    sweeper.start(settings, lambda job_id: sweeper.send_train_job(celery_app, job_id))
