"""Artifacts are content-addressed: a delete of another row with the same bytes may
remove a file the worker wrote before its registration commits. Registration takes the
lock such a delete takes and writes any missing file again, so the model it registers
never points at nothing."""

from __future__ import annotations

from app.artifacts import sha256_file
from app.db import session_scope
from app.store import JobStore, ModelStore
from core.statuses import JobStatus
from tests.support.worker_process import add_dataset, add_job, base_env, prepare


def test_files_removed_before_registration_are_written_again(tmp_path, monkeypatch):
    from worker import jobs, registration

    settings = prepare(base_env(tmp_path / "data", {}))
    job_id = add_job(settings, add_dataset(settings, n=200), 1)
    real_store = registration.store_label_knowledge
    removed = []

    def store_then_lose_the_files(*args, **kwargs):
        stored = real_store(*args, **kwargs)
        for relative in stored.paths:  # what a delete of the same bytes would do now
            (settings.data_dir / relative).unlink()
            removed.append(relative)
        return stored

    monkeypatch.setattr(registration, "store_label_knowledge", store_then_lose_the_files)
    assert jobs.run_job(job_id, settings) == JobStatus.SUCCEEDED
    assert any(r.endswith(".onnx") for r in removed)
    assert any(r.endswith(".issues.npz") for r in removed)
    with session_scope(settings) as session:
        job = JobStore(session).get(job_id)
        model = ModelStore(session).get(job.model_id)
        onnx, issues = model.onnx_path, model.label_issues_path
        onnx_sha256 = model.onnx_sha256
    assert onnx in removed and issues in removed
    assert sha256_file(settings.data_dir / onnx) == onnx_sha256
    assert (settings.data_dir / issues).stat().st_size > 0
