"""The one way an artifact file leaves ``artifacts/``: when no row refers to it any more.

Every caller that drops a reference (dataset delete, model delete, job delete, a job
cancelled after its export, a failed upload, garbage collection) goes through
``change_then_remove_unreferenced``: in one transaction the change runs, then, under
``lock_artifact`` (app/store.py) of each path it names, taken in sorted order (no
deadlock between two deletes), the references are counted in every table
(``artifact_references``), each file with none is set aside, and the transaction
commits; the files are deleted after the commit, and put back if it rolls back.

``lock_artifact`` is the lock a new reference takes too (a dataset upload, before it adds
its row and writes its file), so "count, then remove" never interleaves with "add a row,
then write the file" for the same bytes: either the upload's row is counted, or the
upload writes the file again after the removal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from app.artifacts import ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import artifact_references, lock_artifact

T = TypeVar("T")


def change_then_remove_unreferenced(
    settings: Settings,
    artifacts: ArtifactStore,
    change: Callable[[Session], T],
    paths_of: Callable[[T], Iterable[str]],
) -> tuple[T, list[Path]]:
    """Run ``change(session)``; then remove each file of ``paths_of(its result)`` that no
    row refers to, as the module says. Returns (the change's result, the files removed).
    An exception from ``change`` rolls it back and removes nothing."""
    asides: list[tuple[Path | None, str]] = []
    try:
        with session_scope(settings) as session:
            result = change(session)
            for relative in sorted(set(paths_of(result))):
                lock_artifact(session, relative)
                if artifact_references(session, relative) == 0:
                    asides.append((artifacts.set_aside(relative), relative))
    except BaseException:
        for aside, relative in asides:
            artifacts.put_back(aside, relative)
        raise
    removed: list[Path] = []
    for aside, relative in asides:
        if aside is not None:
            aside.unlink(missing_ok=True)
            removed.append(artifacts.resolve(relative))
    return result, removed


def remove_if_unreferenced(
    settings: Settings, artifacts: ArtifactStore, paths: Iterable[str]
) -> list[Path]:
    """Remove each of ``paths`` that no row refers to (a change that changes nothing)."""
    paths = list(paths)
    _, removed = change_then_remove_unreferenced(settings, artifacts, lambda _s: paths, list)
    return removed
