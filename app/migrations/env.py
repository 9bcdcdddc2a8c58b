"""Alembic environment: the URL comes from the config (app.db.migrate) or the settings."""

from __future__ import annotations

from alembic import context

from app.db import make_engine
from app.settings import Settings
from app.store import Base

config = context.config
target_metadata = Base.metadata
# No logging.fileConfig here: the service's JSON logging stays as configured.


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
