"""A job backed up while it trains and then restored (data folder wiped) is finished by a
real worker process with every epoch in its history once: from the checkpoint the backup
holds, or, that checkpoint gone, from the start with the rerun epochs replaced."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from app import cli
from app.db import get_engine, session_scope
from app.store import JobStore
from core.statuses import TERMINAL_STATUSES, JobStatus
from tests.support.waiting import wait_until
from tests.support.worker_process import add_dataset, add_job, base_env, prepare, start_worker, stop

EPOCHS = 12
BACKED_UP_AT = 4  # epochs in the history when the backup starts


def history_epochs(settings, job_id) -> list[int]:
    with session_scope(settings) as session:
        return [h.epoch for h in JobStore(session).history(job_id)]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["backed-up", "lost"])
def test_a_job_running_at_backup_time_finishes_after_restore_each_epoch_once(
    checkpoint, tmp_path, monkeypatch, capsys
):
    env = base_env(
        tmp_path / "data", {"HETSERVE_SWEEP_GRACE_S": "0", "HETSERVE_SWEEP_INTERVAL_S": "2"}
    )
    for name, value in env.items():
        if name.startswith("HETSERVE_"):
            monkeypatch.setenv(name, value)  # what `hetserve backup/restore` read
    settings = prepare(env)
    job_id = add_job(settings, add_dataset(settings), EPOCHS)  # stranded: the sweeper sends it
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(
            lambda: len(history_epochs(settings, job_id)) >= BACKED_UP_AT,
            180,
            f"{BACKED_UP_AT} epochs",
        )
        assert cli.main(["backup", str(tmp_path / "backup")]) == 0, capsys.readouterr().err
    finally:
        worker.kill()
        worker.wait()
    get_engine(settings).dispose()
    shutil.rmtree(tmp_path / "data")
    if checkpoint == "backed-up":
        backed_up = json.loads((tmp_path / "backup" / "manifest.json").read_text())
        assert backed_up.get("checkpoint_files", 0) >= 1
    else:
        shutil.rmtree(tmp_path / "backup" / "checkpoints", ignore_errors=True)
    assert cli.main(["restore", str(tmp_path / "backup")]) == 0, capsys.readouterr().err
    with session_scope(settings) as session:
        restored = JobStore(session).get(job_id)
        assert restored.status == JobStatus.RUNNING
    restored_epochs = history_epochs(settings, job_id)
    assert len(restored_epochs) >= BACKED_UP_AT and restored_epochs[-1] < EPOCHS

    worker = start_worker(env, tmp_path / "worker-after-restore.log")
    try:

        def ended():
            with session_scope(settings) as session:
                return JobStore(session).get(job_id).status in TERMINAL_STATUSES

        wait_until(ended, 300, "the restored job to end")
    finally:
        stop(worker)
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        assert job.status == JobStatus.SUCCEEDED, job.error
        resumed_from = job.metrics["model"]["resumed_from_epoch"]
    epochs = history_epochs(settings, job_id)
    assert sorted(epochs) == list(range(1, EPOCHS + 1)), Counter(epochs)
    if checkpoint == "backed-up":
        # The checkpoint was copied after the store: at or past the restored history.
        assert resumed_from >= len(restored_epochs), (resumed_from, restored_epochs)
    else:
        assert resumed_from == 0
