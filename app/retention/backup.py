"""Backup and restore: what ``hetserve backup DIR`` and ``hetserve restore DIR`` do (the
store, then the artifacts, then the checkpoints of the jobs under way; SQLite through
the sqlite3 backup API, PostgreSQL through pg_dump / pg_restore).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.artifacts import TMP_PREFIX, sha256_file
from app.db import get_engine, migrate, session_scope
from app.retention.gc import CONTENT_ADDRESS, files_under, is_temporary
from app.settings import Settings
from app.store import referenced_artifacts

MANIFEST = "manifest.json"
SQLITE_FILE = "store.sqlite3"
PG_DUMP_FILE = "store.pgdump"
KEY_FILE = "api_key"
CHECKPOINTS = "checkpoints"
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
    for path in sorted(files_under(source)):
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


def _copy_checkpoints(source: Path, target: Path) -> int:
    """Copy every checkpoint folder under ``source`` to ``target``, replacing what is
    there; a file that goes while it is copied (its job ended) is skipped. Each file is
    written whole before it is renamed into place, as the worker writes it. Returns the
    files copied."""
    files = 0
    for path in sorted(files_under(source)):
        if is_temporary(path.name):
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f"{TMP_PREFIX}{destination.name}")
        try:
            shutil.copy2(path, partial)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            continue
        os.replace(partial, destination)
        files += 1
    return files


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
    snapshot. Then the checkpoints of the jobs under way, taken after the store, so
    each is at or past the epochs its job's dumped history lists (a worker checkpoints
    an epoch before it records it): a restored running job resumes from it, and its
    history keeps each epoch once (the worker records an epoch by replacing that
    epoch's row and any later one of the same phase). Returns the manifest written to
    ``dest/manifest.json``."""
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
                    [
                        pg_dump,
                        "--format=custom",
                        "--no-owner",
                        f"--snapshot={snapshot}",
                        f"--file={dest / store_file}",
                        f"--dbname={uri}",
                    ],
                    env,
                )

    files, size = _copy_tree(data_dir / "artifacts", dest / "artifacts", verify=False)
    missing = sorted(referenced - _present(dest, referenced))
    if missing:
        raise BackupError(
            f"{len(missing)} file(s) the store refers to are not in the data folder "
            f"({', '.join(missing[:5])}): deleted while the backup ran? Run it again into "
            "a new folder"
        )
    checkpoint_files = _copy_checkpoints(data_dir / CHECKPOINTS, dest / CHECKPOINTS)
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
        "checkpoint_files": checkpoint_files,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def restore(settings: Settings, source: Path, *, force: bool = False) -> dict:
    """Restore a ``backup`` folder into the configured store and data folder; the
    service (API and workers) must be stopped. The store first, then the artifacts
    (each checked against its sha256 name), then the checkpoints (replacing those in
    the data folder: a job the backup holds as running resumes from the epoch it had
    reached), then the API key file (when the data folder has none), then the
    migrations (a backup of an older version comes up to date).
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
            raise BackupError(
                f"a store exists at {target}: stop the service, and pass --force to replace it"
            )
        engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite(source / manifest["store_file"]) as copy, _sqlite(target) as live:
            copy.backup(live)
    else:
        pg_restore = _tool("pg_restore")
        with engine.connect() as conn:
            tables = conn.scalar(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            )
        if tables and not force:
            raise BackupError(
                "the PostgreSQL database has tables: stop the service, and pass "
                "--force to replace them"
            )
        engine.dispose()
        uri, env = _libpq(settings)
        _run(
            [
                pg_restore,
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
                f"--dbname={uri}",
                str(source / manifest["store_file"]),
            ],
            env,
        )
    engine.dispose()

    files, size = _copy_tree(source / "artifacts", data_dir / "artifacts", verify=True)
    checkpoint_files = _copy_checkpoints(source / CHECKPOINTS, data_dir / CHECKPOINTS)
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
        "restored_checkpoint_files": checkpoint_files,
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
