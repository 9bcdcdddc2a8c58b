"""Retention: deleting a job, garbage collection of the data folder, backup and restore.

- ``delete_job``: what ``DELETE /v1/jobs/{id}`` does (an ended job, its history, its
  checkpoints; with ``models=True`` also its models and their files); ``delete_model``:
  what ``DELETE /v1/models/{id}`` does.
- ``collect_garbage``: what ``hetserve gc`` does (artifacts no row refers to, checkpoint
  folders of ended or deleted jobs, stale temporary files).
- ``backup`` / ``restore``: what ``hetserve backup DIR`` / ``hetserve restore DIR`` do
  (the store, then the artifacts).

A file under ``artifacts/`` is removed only under ``lock_artifact`` (app/store.py), the
lock a dataset upload takes before it adds its row and writes its file: the rows are
counted, the file set aside and the transaction committed under it, and the file
deleted after the commit (put back if the transaction rolls back).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.artifact_release import change_then_remove_unreferenced as _remove_after_commit
from app.artifacts import ASIDE_PREFIX, TMP_PREFIX, ArtifactStore, sha256_file
from app.db import get_engine, migrate, session_scope
from app.settings import Settings
from app.statuses import TERMINAL_STATUSES
from app.store import (
    Alias,
    Job,
    JobHistory,
    JobStore,
    Model,
    lock_artifact,
    referenced_artifacts,
)

log = logging.getLogger("hetserve.retention")


# --------------------------------------------------------------------------- delete a job


class JobNotFound(Exception):
    pass


class JobConflict(Exception):
    """The job cannot be deleted now (running, has models, an alias points at one)."""


@dataclass
class DeletedJob:
    job_id: str
    model_ids: list[str]
    artifact_paths: list[str]


class ModelNotFound(Exception):
    pass


class ModelConflict(Exception):
    """An alias points at the model."""


def delete_model(settings: Settings, artifacts: ArtifactStore, model_id: str) -> None:
    """What ``DELETE /v1/models/{id}`` does: the row, then each of its artifact files
    (ONNX, label issues) that no other row refers to. Refused while an alias points at
    it. Raises ``ModelNotFound`` or ``ModelConflict``."""

    def change(session: Session) -> list[str]:
        model = session.get(Model, model_id, with_for_update=True)
        if model is None:
            raise ModelNotFound(f"no model {model_id!r}")
        aliases = list(session.scalars(select(Alias.name).where(Alias.model_id == model.id)))
        if aliases:
            raise ModelConflict(
                f"aliases {aliases} point at model {model.id}: move or delete them first"
            )
        paths = model.artifact_paths
        session.delete(model)
        session.flush()
        return paths

    _remove_after_commit(settings, artifacts, change, lambda paths: paths)


def delete_job(
    settings: Settings, artifacts: ArtifactStore, job_id: str, *, models: bool = False
) -> DeletedJob:
    """Delete an ended job, its history rows and its checkpoint folder.

    The job's models stay: a job that has models is refused (``JobConflict``) unless
    ``models`` is true, in which case they go too (refused while an alias points at one),
    and each ONNX file no other row refers to is removed. The job's dataset stays.
    Raises ``JobNotFound``, or ``JobConflict`` for a queued or running job."""

    def change(session: Session) -> DeletedJob:
        JobStore(session).lock(job_id)  # the row lock the worker takes to start or end it
        job = session.get(Job, job_id, populate_existing=True)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if job.status not in TERMINAL_STATUSES:
            raise JobConflict(f"job {job_id} is {job.status}: cancel it first")
        rows = list(session.scalars(select(Model).where(Model.job_id == job_id)))
        if rows and not models:
            raise JobConflict(
                f"job {job_id} has models {[m.id for m in rows]}: delete them first, "
                "or pass models=true to delete them with the job"
            )
        ids = [m.id for m in rows]
        aliases = list(session.execute(select(Alias.name, Alias.model_id).where(
            Alias.model_id.in_(ids)))) if ids else []  # fmt: skip
        if aliases:
            names = sorted(name for name, _ in aliases)
            raise JobConflict(
                f"aliases {names} point at models of job {job_id}: move or delete them first"
            )
        paths = [p for m in rows for p in m.artifact_paths]
        for model in rows:
            session.delete(model)
        session.flush()  # the models (they refer to the job) before the job
        session.execute(delete(JobHistory).where(JobHistory.job_id == job_id))
        session.delete(job)
        session.flush()
        return DeletedJob(job_id, ids, paths)

    deleted, _ = _remove_after_commit(settings, artifacts, change, lambda d: d.artifact_paths)
    shutil.rmtree(artifacts.checkpoint_dir(job_id), ignore_errors=True)
    log.info("job %s deleted (models %s)", job_id, deleted.model_ids, extra={"job_id": job_id})
    return deleted


# --------------------------------------------------------------------------- gc

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


def _files(root: Path) -> Iterator[Path]:
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
    for path in sorted(_files(artifacts.root)):
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

    temporary = [*_files(artifacts.root), *_files(checkpoints)]
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

    _, removed = _remove_after_commit(settings, artifacts, change, lambda paths: paths)
    return bool(removed)


# --------------------------------------------------------------------------- backup / restore

MANIFEST = "manifest.json"
SQLITE_FILE = "store.sqlite3"
PG_DUMP_FILE = "store.pgdump"
KEY_FILE = "api_key"
BACKUP_FORMAT = 1


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


def _backend(settings: Settings) -> str:
    backend = make_url(settings.resolved_database_url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"backup and restore support SQLite and PostgreSQL, not {backend}")
    return backend


def _sqlite_path(settings: Settings) -> Path:
    database = make_url(settings.resolved_database_url).database
    if not database or database == ":memory:":
        raise BackupError("the SQLite store is in memory: nothing to back up")
    return Path(database)


def _libpq(settings: Settings) -> tuple[str, dict[str, str]]:
    """(a libpq URI without the password, the environment with PGPASSWORD): the password
    stays off the command line, where other users could read it."""
    url = make_url(settings.resolved_database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    uri = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not on PATH (Debian: apt-get install postgresql-client)")
    return found


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-2000:]}")


def _referenced_in(conn) -> set[str]:
    """The artifact paths a DB-API or SQLAlchemy connection's store refers to."""
    from app.store import artifact_columns

    paths: set[str] = set()
    for column in artifact_columns():
        query = f"SELECT DISTINCT {column.name} FROM {column.table.name}"
        rows = conn.execute(text(query) if not isinstance(conn, sqlite3.Connection) else query)
        paths.update(row[0] for row in rows if row[0])
    return paths


def _copy_tree(source: Path, target: Path, *, verify: bool) -> tuple[int, int]:
    """Copy the content-addressed files under ``source`` to ``target`` (temporary files
    skipped; a file already there is left: same name, same bytes). ``verify``: refuse a
    file whose bytes do not match its name. Returns (files, bytes) copied."""
    files = size = 0
    for path in sorted(_files(source)):
        if is_temporary(path.name):
            continue
        relative = path.relative_to(source)
        destination = target / relative
        if verify and CONTENT_ADDRESS.match(path.name):
            if sha256_file(path) != path.name.split(".", 1)[0]:
                raise BackupError(f"{path} does not match its sha256 name: the backup is damaged")
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f"{TMP_PREFIX}{destination.name}")
        shutil.copy2(path, partial)
        os.replace(partial, destination)
        files, size = files + 1, size + path.stat().st_size
    return files, size


def _present(root: Path, paths: set[str]) -> set[str]:
    return {p for p in paths if (root / p).is_file()}


def backup(settings: Settings, dest: Path) -> dict:
    """Back up the store, then the artifacts, into the empty (or new) folder ``dest``.

    Store first: every file the dumped rows refer to is then already in the artifact
    folder (an upload writes its file before its row commits) and content-addressed files
    never change, so the copy taken afterwards holds all of them; rows added meanwhile
    bring extra files, which do no harm. A delete that removes a dumped row's file before
    it is copied is detected (the dump's references are checked against the copy) and
    the backup fails: run it again. SQLite: the sqlite3 online backup API; PostgreSQL:
    ``pg_dump --format=custom`` on a snapshot whose references are read in the same
    snapshot. Returns the manifest written to ``dest/manifest.json``."""
    backend = _backend(settings)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)  # the store and the API key file
    data_dir = Path(settings.data_dir).resolve()

    if backend == "sqlite":
        source = _sqlite_path(settings)
        if not source.exists():
            raise BackupError(f"no store at {source}: nothing to back up")
        store_file = SQLITE_FILE
        with _sqlite(source) as live, _sqlite(dest / store_file) as copy:
            live.backup(copy)
        with _sqlite(dest / store_file) as copy:
            referenced = _referenced_in(copy)
            revision = _revision(copy)
    else:
        store_file = PG_DUMP_FILE
        pg_dump = _tool("pg_dump")
        uri, env = _libpq(settings)
        engine = get_engine(settings)
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            with conn.begin():
                snapshot = conn.scalar(text("SELECT pg_export_snapshot()"))
                referenced = _referenced_in(conn)
                revision = _revision(conn)
                _run(
                    [pg_dump, "--format=custom", "--no-owner", f"--snapshot={snapshot}",
                     f"--file={dest / store_file}", f"--dbname={uri}"],
                    env,
                )  # fmt: skip

    files, size = _copy_tree(data_dir / "artifacts", dest / "artifacts", verify=False)
    missing = sorted(referenced - _present(dest, referenced))
    if missing:
        raise BackupError(
            f"{len(missing)} file(s) the store refers to are not in the data folder "
            f"({', '.join(missing[:5])}): deleted while the backup ran? Run it again into "
            "a new folder"
        )
    if (data_dir / KEY_FILE).is_file():
        shutil.copy2(data_dir / KEY_FILE, dest / KEY_FILE)
    manifest = {
        "format": BACKUP_FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "store": backend,
        "store_file": store_file,
        "revision": revision,
        "artifact_files": files,
        "artifact_bytes": size,
        "referenced_artifacts": len(referenced),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def restore(settings: Settings, source: Path, *, force: bool = False) -> dict:
    """Restore a ``backup`` folder into the configured store and data folder; the
    service (API and workers) must be stopped. The store first, then the artifacts
    (each checked against its sha256 name), then the API key file (when the data folder
    has none), then the migrations (a backup of an older version comes up to date).
    An existing store is refused unless ``force`` (it is then replaced).
    Returns the backup's manifest with what was restored."""
    source = Path(source)
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} has no {MANIFEST}: not a hetserve backup") from None
    backend = _backend(settings)
    if manifest.get("store") != backend:
        raise BackupError(
            f"the backup holds a {manifest.get('store')} store, the configured store is "
            f"{backend}: restore into the same kind (HETSERVE_DATABASE_URL)"
        )
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = get_engine(settings)
    if backend == "sqlite":
        target = _sqlite_path(settings)
        if target.exists() and not force:
            raise BackupError(f"a store exists at {target}: stop the service, and pass --force "
                              "to replace it")  # fmt: skip
        engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite(source / manifest["store_file"]) as copy, _sqlite(target) as live:
            copy.backup(live)
    else:
        pg_restore = _tool("pg_restore")
        with engine.connect() as conn:
            tables = conn.scalar(text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ))  # fmt: skip
        if tables and not force:
            raise BackupError("the PostgreSQL database has tables: stop the service, and pass "
                              "--force to replace them")  # fmt: skip
        engine.dispose()
        uri, env = _libpq(settings)
        _run(
            [pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction",
             "--exit-on-error", f"--dbname={uri}", str(source / manifest["store_file"])],
            env,
        )  # fmt: skip
    engine.dispose()

    files, size = _copy_tree(source / "artifacts", data_dir / "artifacts", verify=True)
    key = data_dir / KEY_FILE
    if (source / KEY_FILE).is_file() and not key.exists():
        shutil.copy2(source / KEY_FILE, key)
        key.chmod(0o600)
    migrate(settings)
    with session_scope(settings) as session:
        referenced = referenced_artifacts(session)
    missing = sorted(referenced - _present(data_dir, referenced))
    return manifest | {
        "restored_artifact_files": files,
        "restored_artifact_bytes": size,
        "missing_artifacts": missing,
    }


def _revision(conn) -> str | None:
    query = "SELECT version_num FROM alembic_version"
    try:
        if isinstance(conn, sqlite3.Connection):
            row = conn.execute(query).fetchone()
        else:
            with conn.begin_nested():
                row = conn.execute(text(query)).first()
    except Exception:
        return None
    return row[0] if row else None


class _sqlite:
    """A sqlite3 connection closed on exit (sqlite3's own context manager only commits)."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(str(path))

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()
