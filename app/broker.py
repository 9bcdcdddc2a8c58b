"""The app's side of Celery: send tasks by name and check the broker is reachable.

The app never imports the worker (it may run without torch): tasks are sent by name,
``hetserve.train_job`` with ``[job_id]`` on queue ``train`` (docs/architecture.md). The broker
settings both sides share live here; worker/celery_app.py adds the worker's own.

Embedded default: kombu's ``sqla+sqlite`` transport (a SQLite file under data_dir,
polled every ``broker_polling_interval_s``) and Celery's database result backend.
Production: Redis, with a visibility timeout above the job time limit (celery#5935).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy import Engine, create_engine

from app.settings import Settings

TRAIN_QUEUE = "train"
TRAIN_TASK = "hetserve.train_job"
PING_TIMEOUT_S = 3.0
# Redis: a running worker looks for messages whose visibility timeout has passed (their
# worker died unacknowledged) every this many seconds. kombu's default looks every 10 s
# but scans only every 10th time (unacked_restore_throttle), so a SIGKILLed worker's job
# waited up to ~100 s past the timeout; here each look scans (one ZRANGE, under kombu's
# mutex, per worker per interval).
REDIS_RESTORE_INTERVAL_S = 10


class EmbeddedSQLTransport(kombu_sql.Transport):
    """kombu's SQL transport, with transport options kept out of ``create_engine``.

    kombu 5.7 hands every transport option it does not know to ``create_engine``, so
    ``polling_interval`` (the reason to set options at all) raises a TypeError there.
    """

    class Channel(kombu_sql.Channel):
        def _engine_from_config(self) -> Engine:
            url = self.connection.client.hostname
            if url.startswith("sqlite"):
                return create_engine(url, connect_args={"timeout": 30})
            return create_engine(url, pool_pre_ping=True)


def result_backend_url(settings: Settings) -> str:
    if settings.result_backend:
        return settings.result_backend
    database = settings.resolved_database_url
    if database.startswith("sqlite"):
        # A file of its own: Celery's engine would not wait on our SQLite write lock.
        return f"db+sqlite:///{(settings.data_dir / 'results.db').resolve()}"
    return f"db+{database}"


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration shared by the app (client) and the worker."""
    if settings.job_time_limit_s >= settings.broker_visibility_timeout_s:
        raise ValueError(
            "broker_visibility_timeout_s must exceed job_time_limit_s, "
            "else Redis redelivers running jobs (celery#5935)"
        )
    broker_url, transport = settings.resolved_broker_url, None
    transport_options: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout_s}
    if broker_url.startswith(("sqla+", "sqlalchemy+")):
        broker_url, transport = broker_url.split("+", 1)[1], f"{__name__}:EmbeddedSQLTransport"
        transport_options = {"polling_interval": settings.broker_polling_interval_s}
        if broker_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
    elif broker_url.startswith(("redis", "rediss")):
        transport_options |= {
            "unacked_restore_interval": REDIS_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        }
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    elif broker_url.startswith("filesystem"):
        transport_options["polling_interval"] = settings.broker_polling_interval_s
    return {
        "broker_url": broker_url,
        "broker_transport": transport,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": PING_TIMEOUT_S,
        "result_backend": result_backend_url(settings),
        "result_extended": False,
        "task_default_queue": TRAIN_QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }


@lru_cache(maxsize=4)
def _client(settings_json: str) -> Celery:
    settings = Settings.model_validate_json(settings_json)
    client = Celery("hetserve-api")
    client.conf.update(broker_config(settings))
    return client


def client(settings: Settings) -> Celery:
    return _client(settings.model_dump_json())


def send_train_job(settings: Settings, job_id: str) -> None:
    client(settings).send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE)


def ping(settings: Settings) -> None:
    """Raise if the broker does not answer within PING_TIMEOUT_S."""

    def declare() -> None:
        with client(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=PING_TIMEOUT_S)
            # queue_declare counts the queue's messages: one real round trip to the broker.
            conn.default_channel.queue_declare(queue=TRAIN_QUEUE, durable=True, auto_delete=False)

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(declare).result(timeout=PING_TIMEOUT_S + 1)
    except FutureTimeout:
        raise TimeoutError(f"broker did not answer within {PING_TIMEOUT_S + 1:.0f} s") from None
    finally:
        pool.shutdown(wait=False)
