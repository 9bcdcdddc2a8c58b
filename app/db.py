"""Database engine, sessions and migrations.

- SQLite (embedded default): WAL journal so the API reads while the worker writes, a
  busy timeout so concurrent writers wait instead of failing, foreign keys on.
- PostgreSQL (production): ``postgresql+psycopg://...``, pooled with pre-ping.
- ``migrate(settings)`` = ``alembic upgrade head``, programmatically, from the
  migration scripts shipped inside the package (app/migrations).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split(":///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache(maxsize=8)
def _engine_and_factory(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    return engine, sessionmaker(bind=engine, expire_on_commit=False)


def get_engine(settings: Settings) -> Engine:
    return _engine_and_factory(settings.resolved_database_url)[0]


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    session = _engine_and_factory(settings.resolved_database_url)[1]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(settings: Settings) -> None:
    """Raise if the database cannot answer a trivial query."""
    with get_engine(settings).connect() as conn:
        conn.execute(text("SELECT 1"))


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
