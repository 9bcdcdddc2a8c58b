"""A scratch PostgreSQL database and Redis key prefix on the test services.

The variables HETSERVE_TEST_REDIS_URL and HETSERVE_TEST_DATABASE_URL (set by .ci/run)
name the services. Unset: the test is skipped with a reason. Set but unreachable: the
test fails (a broken service must not pass as a skip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def scratch_redis_postgres(label: str) -> Iterator[dict[str, str]]:
    """Yield the HETSERVE_* variables of a fresh database and key prefix; drop both after."""
    redis_url = os.environ.get("HETSERVE_TEST_REDIS_URL")
    database_url = os.environ.get("HETSERVE_TEST_DATABASE_URL")
    if not redis_url or not database_url:
        pytest.skip(
            "HETSERVE_TEST_REDIS_URL / HETSERVE_TEST_DATABASE_URL not set (.ci/run sets them)"
        )
    import psycopg
    import redis
    from sqlalchemy.engine import make_url

    try:
        redis_client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        redis_client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"HETSERVE_TEST_REDIS_URL={redis_url} is set but unreachable: {exc}")
    admin = make_url(database_url)
    database = f"hetserve_{label}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
    except psycopg.Error as exc:
        pytest.fail(f"HETSERVE_TEST_DATABASE_URL={database_url} is set but unusable: {exc}")
    prefix = f"hetserve-{label}:"
    try:
        yield {
            "HETSERVE_DATABASE_URL": admin.set(database=database).render_as_string(
                hide_password=False
            ),
            "HETSERVE_BROKER_URL": redis_url,
            "HETSERVE_BROKER_KEY_PREFIX": prefix,
        }
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for key in redis_client.scan_iter(match=f"{prefix}*"):
            redis_client.delete(key)
