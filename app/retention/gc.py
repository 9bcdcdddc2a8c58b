"""Garbage collection of the data folder: what ``hetserve gc`` does (artifacts no row
refers to, checkpoint folders of ended or deleted jobs, stale temporary files), and what
counts as a content-addressed or a temporary file there (backup copies by the same rules).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifact_release import change_then_remove_unreferenced as remove_after_commit
from app.artifacts import ASIDE_PREFIX, TMP_PREFIX, ArtifactStore
from app.db import session_scope
from app.settings import Settings
from app.store import Job, lock_artifact, referenced_artifacts
from core.statuses import TERMINAL_STATUSES

log = logging.getLogger("hetserve.retention")

CONTENT_ADDRESS = re.compile(r"^[0-9a-f]{64}(\.[A-Za-z0-9]+)*$")


@dataclass
class GcReport:
    """What ``collect_garbage`` removed (with ``dry_run``: would remove). Paths are
    relative to the data folder."""

    dry_run: bool
    grace_s: float
    artifacts: list[str] = field(default_factory=list)
    artifact_bytes: int = 0
    checkpoints: list[str] = field(default_factory=list)  # job ids
    temporary: list[str] = field(default_factory=list)
    kept_recent: list[str] = field(default_factory=list)  # unreferenced, within the grace

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {len(self.artifacts)} unreferenced artifact(s) ({self.artifact_bytes} bytes), "
            f"{len(self.checkpoints)} checkpoint folder(s), {len(self.temporary)} temporary "
            f"file(s); kept {len(self.kept_recent)} unreferenced artifact(s) younger than "
            f"{self.grace_s:g} s"
        )


def files_under(root: Path) -> Iterator[Path]:
    """Every file below ``root`` (nothing when it is not a folder)."""
    if root.is_dir():
        for folder, _dirs, names in os.walk(root):
            for name in names:
                yield Path(folder) / name


def _age_s(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


def is_temporary(name: str) -> bool:
    """A file some writer leaves behind when it dies mid-way: an artifact being written
    (``.tmp-*``) or set aside (``.del-*``), a checkpoint or ONNX export being written
    (``*.tmp``), the readiness probe's file (``.readyz-*``)."""
    return name.startswith((TMP_PREFIX, ASIDE_PREFIX, ".readyz-")) or name.endswith(".tmp")


def collect_garbage(settings: Settings, dry_run: bool = False) -> GcReport:
    """Remove what no row needs from the data folder:

    - a file under ``artifacts/`` that no row refers to and that is older than
      ``settings.gc_grace_s`` (an upload writes its file before its row commits; storing
      bytes again refreshes the time): re-checked and removed under its artifact lock;
    - ``checkpoints/<job_id>/`` of a job that ended or no longer exists;
    - temporary files (``is_temporary``) under ``artifacts/`` and ``checkpoints/``, and
      the readiness probe's in the data folder, older than the grace period.

    ``dry_run``: report the same, change nothing (no lock taken)."""
    artifacts = ArtifactStore(settings.data_dir)
    grace = settings.gc_grace_s
    report = GcReport(dry_run=dry_run, grace_s=grace)
    now = time.time()
    data_dir = artifacts.data_dir

    with session_scope(settings) as session:
        referenced = referenced_artifacts(session)
    candidates = []
    for path in sorted(files_under(artifacts.root)):
        relative = path.relative_to(data_dir).as_posix()
        if not CONTENT_ADDRESS.match(path.name) or relative in referenced:
            continue  # temporary files below; anything else is not ours to remove
        age = _age_s(path, now)
        if age is None:
            continue
        if age < grace:
            report.kept_recent.append(relative)
        else:
            candidates.append(relative)
    for relative in candidates:
        size = _size(artifacts.resolve(relative))
        if dry_run:
            report.artifacts.append(relative)
            report.artifact_bytes += size
        elif _remove_unreferenced(settings, artifacts, relative, grace):
            report.artifacts.append(relative)
            report.artifact_bytes += size

    checkpoints = data_dir / "checkpoints"
    folders = sorted(p for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.is_dir() else []
    if folders:
        with session_scope(settings) as session:
            ids = [p.name for p in folders]
            live = set(
                session.scalars(
                    select(Job.id).where(Job.id.in_(ids), Job.status.not_in(TERMINAL_STATUSES))
                )
            )
        for folder in folders:
            if folder.name in live:
                continue
            report.checkpoints.append(folder.name)
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)

    temporary = [*files_under(artifacts.root), *files_under(checkpoints)]
    temporary += [p for p in data_dir.glob(".readyz-*") if p.is_file()]
    for path in sorted(temporary):
        if not is_temporary(path.name):
            continue
        age = _age_s(path, now)
        if age is None or age < grace:
            continue
        report.temporary.append(path.relative_to(data_dir).as_posix())
        if not dry_run:
            path.unlink(missing_ok=True)
    if not dry_run:
        log.info("gc: %s", report.summary())
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove_unreferenced(
    settings: Settings, artifacts: ArtifactStore, relative: str, grace: float
) -> bool:
    """Remove one artifact if, under its lock, no row refers to it and it is still older
    than the grace period (an upload of the same bytes may have refreshed it)."""

    def change(session: Session) -> list[str]:
        lock_artifact(session, relative)
        age = _age_s(artifacts.resolve(relative), time.time())
        return [relative] if age is not None and age >= grace else []

    _, removed = remove_after_commit(settings, artifacts, change, lambda paths: paths)
    return bool(removed)
