"""collect_garbage (``hetserve gc``) on SQLite and PostgreSQL: unreferenced artifacts
older than the grace period go, a fresh one stays (an upload in flight), referenced ones
stay; checkpoint folders of ended or deleted jobs go, a running job's stay; stale
temporary files go; a dry run reports the same and changes nothing."""

from __future__ import annotations

import json
import os
import time

import pytest

from app import cli
from app.artifacts import ArtifactStore
from app.db import migrate, session_scope
from app.retention.gc import collect_garbage
from app.store import DatasetStore, JobStore
from tests.support.finished_jobs import finished_job
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.service_client import make_settings

HOUR = 3600


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        yield make_settings(tmp_path / "data", gc_grace_s=HOUR)
        return
    with scratch_redis_postgres(f"gc_{os.getpid()}") as env:
        yield make_settings(
            tmp_path / "data", gc_grace_s=HOUR, database_url=env["HETSERVE_DATABASE_URL"]
        )


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_gc_removes_only_old_unreferenced_files(settings):
    migrate(settings)
    artifacts = ArtifactStore(settings.data_dir)
    referenced, _ = artifacts.put_bytes(b"dataset bytes", ".npz")
    with session_scope(settings) as session:
        dataset = DatasetStore(session).add(
            name="d", format="npz", task="multiclass", num_train=1, input_shape=[3],
            num_classes=2, class_names=["a", "b"], sha256="0" * 64, size_bytes=13,
            artifact_path=referenced,
        )  # fmt: skip
        running = JobStore(session).create(dataset.id, {})
        JobStore(session).start_attempt(running.id)
    ended_job, _, model_onnx = finished_job(settings, dataset.id, onnx=b"model bytes")
    old_orphan, _ = artifacts.put_bytes(b"orphan from a crash", ".onnx")
    fresh_orphan, _ = artifacts.put_bytes(b"upload in flight", ".npz")
    for relative in (referenced, model_onnx, old_orphan):
        age(artifacts.resolve(relative), 2 * HOUR)
    # checkpoints: the ended job's (left by a crash), a running job's, a deleted job's
    running_ckpt = artifacts.checkpoint_dir(running.id)
    running_ckpt.mkdir(parents=True)
    (running_ckpt / "checkpoint.pt").write_bytes(b"w")
    gone_ckpt = artifacts.checkpoint_dir("e" * 32)
    gone_ckpt.mkdir(parents=True)
    # temporary files: stale ones go, fresh ones (a write under way) stay
    stale_tmp = artifacts.resolve(old_orphan).with_name(".tmp-abc123")
    stale_aside = artifacts.resolve(old_orphan).with_name(".del-1-ab-x.onnx")
    stale_ckpt_tmp = running_ckpt / "checkpoint.tmp"
    fresh_tmp = artifacts.resolve(fresh_orphan).with_name(".tmp-fresh")
    for path in (stale_tmp, stale_aside, stale_ckpt_tmp, fresh_tmp):
        path.write_bytes(b"partial")
    for path in (stale_tmp, stale_aside, stale_ckpt_tmp):
        age(path, 2 * HOUR)

    before = snapshot(settings.data_dir)
    dry = collect_garbage(settings, dry_run=True)
    assert snapshot(settings.data_dir) == before  # a dry run changes nothing
    assert dry.artifacts == [old_orphan] and dry.kept_recent == [fresh_orphan]
    assert sorted(dry.checkpoints) == sorted([ended_job, "e" * 32])
    assert len(dry.temporary) == 3

    report = collect_garbage(settings)
    assert report.to_dict() | {"dry_run": True} == dry.to_dict()
    assert report.artifact_bytes == len(b"orphan from a crash")
    assert not artifacts.resolve(old_orphan).exists()
    for relative in (referenced, model_onnx, fresh_orphan):
        assert artifacts.resolve(relative).is_file(), relative
    assert not artifacts.checkpoint_dir(ended_job).exists() and not gone_ckpt.exists()
    assert (running_ckpt / "checkpoint.pt").is_file()
    assert not stale_tmp.exists() and not stale_aside.exists() and not stale_ckpt_tmp.exists()
    assert fresh_tmp.exists()

    again = collect_garbage(settings)  # nothing left to do
    assert again.artifacts == [] and again.checkpoints == [] and again.temporary == []


def test_an_orphan_stored_again_is_fresh(settings):
    """Storing bytes already there refreshes the file's time: an upload of the same bytes
    as an old orphan is not removed under it."""
    migrate(settings)
    artifacts = ArtifactStore(settings.data_dir)
    relative, _ = artifacts.put_bytes(b"same bytes", ".npz")
    age(artifacts.resolve(relative), 2 * HOUR)
    artifacts.put_bytes(b"same bytes", ".npz")
    assert collect_garbage(settings).artifacts == []
    assert artifacts.resolve(relative).is_file()


def test_cli_gc(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path / "data")
    migrate(settings)
    orphan, _ = ArtifactStore(settings.data_dir).put_bytes(b"orphan", ".npz")
    age(ArtifactStore(settings.data_dir).resolve(orphan), 2 * HOUR)
    monkeypatch.setenv("HETSERVE_DATA_DIR", str(settings.data_dir))
    assert cli.main(["gc", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"] == [orphan]
    assert cli.main(["gc"]) == 0
    out = capsys.readouterr().out
    assert f"removed artifact {orphan}" in out and "removed 1 unreferenced artifact" in out
    assert not (settings.data_dir / orphan).exists()
