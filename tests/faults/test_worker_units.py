"""In-process pieces of the fault handling: which errors count as a store outage, what
a task does with one, and how the sweeper reads job ids out of broker messages."""

from __future__ import annotations

import base64
import json

import pytest
from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError, ProgrammingError

from worker import outage, shutdown, sweeper


def operational() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def test_connection_errors_are_outages_and_others_are_not():
    assert outage.is_store_outage(operational())
    wrapped = RuntimeError("progress write failed")
    wrapped.__cause__ = operational()
    assert outage.is_store_outage(wrapped)
    assert not outage.is_store_outage(ProgrammingError("SELECT x", {}, Exception("no column")))
    assert not outage.is_store_outage(ValueError("bad spec"))


def test_a_full_disk_is_not_a_store_outage():
    import errno
    import sqlite3

    full = OperationalError("DELETE ...", {}, sqlite3.OperationalError("database or disk is full"))
    assert not outage.is_store_outage(full)  # it fails the job, never waits for the store
    checkpoint = RuntimeError("epoch 3")
    checkpoint.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert not outage.is_store_outage(checkpoint)


def test_a_task_hands_the_job_back_only_after_the_store_answers(monkeypatch):
    from worker import tasks

    calls = []
    monkeypatch.setattr(outage, "wait_for_store", lambda s: calls.append("wait") or True)
    monkeypatch.setattr(outage, "release_attempt", lambda j, s: calls.append(("release", j)))
    with pytest.raises(Reject) as caught, tasks.handing_back("a" * 32):
        raise outage.StoreOutage("a" * 32, attempt_counted=True) from operational()
    assert caught.value.requeue and calls == ["wait", ("release", "a" * 32)]
    assert not shutdown.HELD_HERE


def test_an_error_with_the_store_up_is_not_handed_back_forever(monkeypatch):
    from worker import tasks

    monkeypatch.setattr(outage, "wait_for_store", lambda s: False)  # answered at once
    with pytest.raises(OperationalError), tasks.handing_back("b" * 32):
        raise operational()


def test_job_ids_in_headers_and_base64_bodies():
    job, other = "0123456789abcdef" * 2, "fedcba9876543210" * 2
    body = base64.b64encode(json.dumps([[], {"callback": {"args": [job]}}, {}]).encode())
    envelope = {
        "body": body.decode(),
        "headers": {"id": "5b1f3c1e-1111-2222-3333-444455556666", "argsrepr": f"['{other}']"},
        "properties": {"body_encoding": "base64"},
    }
    assert sweeper.job_ids_in(json.dumps(envelope)) == {job, other}
    # Redis's unacked hash holds [message, exchange, routing_key].
    assert sweeper.job_ids_in(json.dumps([envelope, "", "train"]).encode()) == {job, other}
