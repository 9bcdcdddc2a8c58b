"""A full data volume: recognising it, and keeping room to recover from it.

``is_disk_full(exc)``: ENOSPC/EDQUOT anywhere in the exception's chain of causes,
SQLite's SQLITE_FULL ("database or disk is full"), PostgreSQL's ``disk_full`` (SQLSTATE
53100), or those messages carried as text (a training unit's error string).

The reserve: ``data_dir/.space-reserve``, a file of ``RESERVE_BYTES`` kept on the data
volume (``ensure_reserve``: API start, worker start, ``/readyz``, after a delete). On a
full volume an embedded (SQLite) store cannot even delete a row or record a job's
failure: the journal needs a few pages (measured on a full tmpfs: a 20-row delete failed
with 16 KiB free and passed with 64 KiB). ``releasing_reserve(fn)`` runs ``fn`` and, if
it failed because the disk is full, deletes the reserve and runs it once more; the
reserve comes back with ``ensure_reserve`` once there is room again.

``free_bytes(path)``: what an unprivileged writer may still use there (statvfs).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("hetserve.disk")

RESERVE_NAME = ".space-reserve"
RESERVE_BYTES = 2 * 1024 * 1024
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
POSTGRES_DISK_FULL = "53100"
NO_SPACE = "no space left on the data volume"

T = TypeVar("T")


def is_disk_full(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        orig = getattr(exc, "orig", None)  # a SQLAlchemy DBAPIError's driver exception
        if getattr(orig, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
        if getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL":
            return True
        text = str(exc).lower()
        if any(t in text for t in DISK_FULL_TEXTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def reserve_path(data_dir: Path) -> Path:
    return Path(data_dir) / RESERVE_NAME


def ensure_reserve(data_dir: Path) -> bool:
    """Create the reserve if it is missing and there is room; True when it is there.
    Written whole under a temporary name, then renamed: never a short reserve."""
    target = reserve_path(data_dir)
    if target.exists():
        return True
    tmp = target.with_name(f"{RESERVE_NAME}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return True
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if not is_disk_full(exc):
            log.warning("could not create the space reserve %s: %s", target, exc)
        return False


def release_reserve(data_dir: Path) -> bool:
    """Delete the reserve; True when this call freed it."""
    try:
        reserve_path(data_dir).unlink()
    except FileNotFoundError:
        return False
    log.warning("the data volume is full: released the space reserve (%d bytes)", RESERVE_BYTES)
    return True


def releasing_reserve(data_dir: Path, fn: Callable[[], T]) -> T:
    """``fn()``; when it fails because the disk is full, release the reserve and call it
    once more (``fn`` must be safe to repeat after a failure: one transaction). Tries to
    put the reserve back afterwards (there is room again when ``fn`` freed a file)."""
    try:
        return fn()
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        release_reserve(data_dir)
    try:
        return fn()
    finally:
        ensure_reserve(data_dir)
