"""A job on a dataset registered by reference, run in-process by worker.jobs: an image
folder streams through the DataLoader and trains; a file changed or removed after
registration fails the job with an error naming it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from app.db import session_scope
from app.store import JobStore, ModelStore
from tests.support.folder_datasets import FOLDER_SPEC, job_row, synthetic_folder
from tests.support.service_client import AUTH, client_for, make_settings
from worker import jobs


@pytest.fixture
def setup(tmp_path):
    roots = tmp_path / "roots"
    folder = synthetic_folder(roots / "colours", per_class=12)
    settings = make_settings(tmp_path / "data", dataset_roots=str(roots), loader_workers=2)
    with client_for(settings) as client:
        r = client.post(
            "/v1/datasets", json={"uri": f"file://{folder}", "image_size": 8}, headers=AUTH
        )
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
    return settings, folder, dataset_id


def submit(settings, dataset_id) -> str:
    with session_scope(settings) as session:
        return JobStore(session).create(dataset_id, FOLDER_SPEC | {"dataset_id": dataset_id}).id


def test_an_image_folder_streams_and_trains(setup):
    settings, _folder, dataset_id = setup
    job_id = submit(settings, dataset_id)
    assert jobs.run_job(job_id, settings) == "succeeded"
    status, error, model_id = job_row(settings, job_id)
    assert status == "succeeded", error
    with session_scope(settings) as session:
        model = ModelStore(session).get(model_id)
        assert model.input_shape == [3, 8, 8] and model.class_names == ["blue", "green", "red"]
        # What the model knows about its training labels, over the folder read again.
        assert model.noise_report["num_examples"] == 36, model.noise_report
        assert model.label_issues_path is not None


@pytest.mark.parametrize("change", ["rewrite", "remove"])
def test_a_changed_or_missing_file_fails_the_job_naming_it(setup, change):
    settings, folder, dataset_id = setup
    target = folder / "train" / "green" / "00003.png"
    if change == "rewrite":
        buffer = io.BytesIO()
        Image.new("RGB", (9, 9), (1, 2, 3)).save(buffer, format="PNG")
        target.write_bytes(buffer.getvalue())
    else:
        os.remove(target)
    job_id = submit(settings, dataset_id)
    assert jobs.run_job(job_id, settings) == "failed"
    status, error, _ = job_row(settings, job_id)
    word = "changed since the dataset was registered" if change == "rewrite" else "is missing"
    assert status == "failed" and "train/green/00003.png" in error and word in error, error


def registered_npz(tmp_path, seed: int):
    """A 60-row .npz under a dataset root, registered by URI: (settings, path, x, y, id)."""
    roots = tmp_path / "roots"
    roots.mkdir()
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 2
    x = (rng.normal(size=(60, 4)) + 2.0 * y[:, None]).astype(np.float32)
    path = roots / "points.npz"
    np.savez(path, x_train=x, y_train=y)
    settings = make_settings(tmp_path / "data", dataset_roots=str(roots))
    with client_for(settings) as client:
        r = client.post("/v1/datasets", json={"uri": f"file://{path}"}, headers=AUTH)
        assert r.status_code == 201, r.text
    return settings, path, x, y, r.json()["id"]


def run_npz_job(settings, dataset_id: str) -> tuple[str, str]:
    """A small MLP job on the dataset, run in this process: (its final status, its id)."""
    spec = FOLDER_SPEC | {"backbone": {"kind": "mlp", "hidden": [8]}, "dataset_id": dataset_id}
    with session_scope(settings) as session:
        job_id = JobStore(session).create(dataset_id, spec).id
    return jobs.run_job(job_id, settings), job_id


def test_an_npz_by_reference_trains_and_fails_once_changed(tmp_path):
    settings, path, x, y, dataset_id = registered_npz(tmp_path, seed=0)
    status, job_id = run_npz_job(settings, dataset_id)
    assert status == "succeeded", job_row(settings, job_id)
    np.savez(path, x_train=x[:50], y_train=y[:50])
    status, job_id = run_npz_job(settings, dataset_id)
    assert status == "failed"
    _, error, _ = job_row(settings, job_id)
    assert "points.npz" in error and "changed since the dataset was registered" in error


def restore_times(path, stat_before) -> None:
    """Set ``path``'s mtime (and atime) back to what ``stat_before`` recorded."""
    os.utime(path, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns), follow_symlinks=True)


def test_a_file_swapped_for_a_symlink_out_of_the_roots_fails_the_job(setup, tmp_path):
    """Same bytes, size and mtime outside the roots: size and stamp cannot tell, the open
    must (its real path is checked every time a file is opened, not only at registration)."""
    settings, folder, dataset_id = setup
    target = folder / "train" / "green" / "00003.png"
    outside = tmp_path / "outside.png"
    outside.write_bytes(target.read_bytes())
    restore_times(outside, target.stat())
    target.unlink()
    target.symlink_to(outside)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (
        outside.stat().st_size,
        outside.stat().st_mtime_ns,
    )
    job_id = submit(settings, dataset_id)
    assert jobs.run_job(job_id, settings) == "failed"
    status, error, _ = job_row(settings, job_id)
    assert status == "failed" and "train/green/00003.png" in error, error
    assert "outside the allowed dataset roots" in error, error


def test_an_image_rewritten_with_its_size_and_mtime_restored_fails_the_job(tmp_path):
    """An image of another class, the same size (uncompressed PNG of the same shape), its
    mtime set back: only the content tells (the sha256 recorded at registration)."""
    roots = tmp_path / "roots"
    folder = synthetic_folder(roots / "colours", per_class=12)
    target = folder / "train" / "green" / "00003.png"
    Image.open(target).save(target, compress_level=0)
    settings = make_settings(tmp_path / "data", dataset_roots=str(roots))
    with client_for(settings) as client:
        r = client.post(
            "/v1/datasets", json={"uri": f"file://{folder}", "image_size": 8}, headers=AUTH
        )
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
    before = target.stat()
    Image.new("RGB", (12, 12), (220, 40, 40)).save(target, compress_level=0)
    restore_times(target, before)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    job_id = submit(settings, dataset_id)
    assert jobs.run_job(job_id, settings) == "failed"
    status, error, _ = job_row(settings, job_id)
    assert status == "failed" and "train/green/00003.png" in error, error
    assert "different content" in error, error


def test_an_npz_with_every_label_flipped_and_its_mtime_restored_fails_the_job(tmp_path):
    settings, path, x, y, dataset_id = registered_npz(tmp_path, seed=1)
    before = path.stat()
    np.savez(path, x_train=x, y_train=1 - y)
    restore_times(path, before)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    status, job_id = run_npz_job(settings, dataset_id)
    assert status == "failed"
    _, error, _ = job_row(settings, job_id)
    assert "points.npz" in error and "different content" in error, error
