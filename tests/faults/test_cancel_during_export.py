"""A cancel that arrives while the worker exports the trained model is honoured: the
job ends cancelled, no model is registered, no ONNX file (nor label-issues file) is left behind."""

from __future__ import annotations

from app.db import session_scope
from app.store import JobStore, ModelStore
from core.statuses import JobStatus
from tests.support.worker_process import add_dataset, add_job, base_env, prepare


def test_cancel_during_export_ends_the_job_cancelled(tmp_path, monkeypatch):
    from worker import jobs, registration

    settings = prepare(base_env(tmp_path / "data", {}))
    job_id = add_job(settings, add_dataset(settings, n=200), 1)
    real_export = registration.export_onnx
    answers = []

    def export_then_cancel(*args, **kwargs):
        real_export(*args, **kwargs)
        with session_scope(settings) as session:  # what POST /v1/jobs/{id}/cancel does
            job = JobStore(session).request_cancel(job_id)
            answers.append((job.status, job.cancel_requested))

    monkeypatch.setattr(registration, "export_onnx", export_then_cancel)
    assert jobs.run_job(job_id, settings) == JobStatus.CANCELLED
    assert answers == [(JobStatus.RUNNING, True)]  # the API answered 202
    with session_scope(settings) as session:
        assert JobStore(session).get(job_id).status == JobStatus.CANCELLED
        assert ModelStore(session).count_for_job(job_id) == 0
    assert not list((settings.data_dir / "artifacts").rglob("*.onnx"))
    assert not list((settings.data_dir / "artifacts").rglob("*.issues.npz"))  # nor label issues


def test_cancel_after_the_end_changes_nothing(tmp_path):
    from worker import jobs

    settings = prepare(base_env(tmp_path / "data", {}))
    job_id = add_job(settings, add_dataset(settings, n=200), 1)
    assert jobs.run_job(job_id, settings) == JobStatus.SUCCEEDED
    with session_scope(settings) as session:
        job = JobStore(session).request_cancel(job_id)
        assert job.status == JobStatus.SUCCEEDED and not job.cancel_requested  # 409
