"""Structured logging: one JSON object per line on stderr, in the API and in the worker.

Every line carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` and ``process``
(``api``, ``worker``, ``cli``...). Inside ``with bind_job(job_id):`` every line, from any
logger, also carries ``"job_id"``: the binding lives in a contextvar, so it follows the
code that runs the job (threads started inside do not inherit it; asyncio tasks do).
Fields passed with ``extra={...}`` are added as they are when JSON can hold them.

uvicorn, Celery and torch install their own handlers; ``configure_logging`` removes those
from their loggers and lets the records propagate to the root handler, and routes
``warnings`` through logging, so one format covers every line Python emits (native
libraries writing to stderr themselves, such as onnxruntime's C++ warnings, stay as they
are). Stdlib only.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hetserve_job_id", default=None
)

# Loggers that configure their own handlers (uvicorn's dictConfig, Celery's setup); their
# records go to the root handler instead, so they come out as JSON too.
FOREIGN_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "celery",
    "celery.app.trace",
    "celery.worker",
    "celery.task",
    "celery.redirected",
    "kombu",
    "alembic",
    "torch",  # torch._logging's own handler prints "W1125 12:00:00 ..." lines
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
    "job_id",
}


@contextlib.contextmanager
def bind_job(job_id: str) -> Iterator[None]:
    """Every log line emitted inside this block carries ``"job_id": job_id``."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Stamps the bound job id on the record in the thread that logs it (before any
    hand-off to another thread could lose the contextvar)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """LogRecord -> one line of JSON."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": self.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            line["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in line:
                line[key] = value if _is_jsonable(value) else repr(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def _is_jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def configure_logging(level: str = "INFO", process: str = "api") -> logging.Handler:
    """Send every log record of this process to stderr as JSON lines.

    Idempotent: calling it again replaces the handler it installed before (uvicorn's
    reload, tests). Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_hetserve", False)]:
        root.removeHandler(old)
    # sys.__stderr__: Celery may have replaced sys.stderr by a proxy that logs
    # (worker_redirect_stdouts); writing records into it would loop.
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler._hetserve = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(process))
    handler.addFilter(JobIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True
    # warnings.warn (Celery's SecurityWarning, deprecations) as records of "py.warnings"
    logging.captureWarnings(True)
    return handler
