"""worker.jobs.run_job in-process on a real store (no broker): how a job ends when
training cannot go on, and what a finished job stores about its training labels. The
happy paths run through real processes in test_service_e2e.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from app.artifacts import ArtifactStore
from app.db import migrate, session_scope
from app.settings import Settings
from app.store import DatasetStore, JobStore, ModelStore
from app.uploads import validate_arrays
from core import label_issues_file
from core.spec import RunSpec
from worker.jobs import run_job
from worker.units import Unit, job_units

SPEC = {
    "task": "multiclass",
    "head": {
        "kind": "het",
        "num_factors": 1,
        "temperature": 1.0,
        "train_mc_samples": 4,
        "eval_mc_samples": 8,
    },
    "backbone": {"kind": "mlp", "hidden": [8]},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", api_keys="k")
    migrate(settings)
    return settings


def new_job(settings: Settings, spec: dict, arrays: dict | None = None) -> str:
    rng = np.random.default_rng(0)
    arrays = arrays or {"x_train": rng.normal(size=(40, 3)), "y_train": np.arange(40) % 2}
    dataset = validate_arrays(arrays, None)
    relative, sha256 = ArtifactStore(settings.data_dir).put_bytes(dataset.to_npz_bytes(), ".npz")
    with session_scope(settings) as session:
        row = DatasetStore(session).add(
            name="t", format="npz", task=dataset.task, **dataset.counts, input_shape=dataset.input_shape,
            num_classes=len(dataset.class_names), class_names=dataset.class_names, sha256=sha256, size_bytes=1, artifact_path=relative,
        )  # fmt: skip
        return JobStore(session).create(row.id, spec).id


def ended(settings: Settings, job_id: str):
    with session_scope(settings) as session:
        return JobStore(session).get(job_id), ModelStore(session).count_for_job(job_id)


def test_time_limit_fails_the_job_with_the_reason(settings):
    settings = settings.model_copy(update={"job_time_limit_s": 0})
    job_id = new_job(settings, SPEC)
    assert run_job(job_id, settings) == "failed"
    job, models = ended(settings, job_id)
    assert job.status == "failed" and "time limit" in job.error and models == 0
    assert not ArtifactStore(settings.data_dir).checkpoint_dir(job_id).exists()


def test_a_spec_that_does_not_fit_the_dataset_fails_before_training(settings):
    # The API refuses this spec with the same check; a job stored anyway never trains.
    job_id = new_job(settings, SPEC | {"backbone": {"kind": "cnn"}})  # images backbone on vectors
    assert run_job(job_id, settings) == "failed"
    job, models = ended(settings, job_id)
    assert (
        job.status == "failed"
        and "SpecMismatch" in job.error
        and "images" in job.error
        and models == 0
    )


def test_a_training_error_fails_the_job_with_the_message(settings, monkeypatch):
    def broken_training(*_args, **_kwargs):
        raise ValueError("the loss went sideways")

    monkeypatch.setattr("worker.jobs.train", broken_training)
    job_id = new_job(settings, SPEC)
    assert run_job(job_id, settings) == "failed"
    job, models = ended(settings, job_id)
    assert (
        job.status == "failed" and "ValueError: the loss went sideways" in job.error and models == 0
    )


def test_cancel_requested_before_the_first_step_ends_cancelled(settings):
    job_id = new_job(settings, SPEC)
    with session_scope(settings) as session:
        JobStore(session).start_attempt(job_id)  # running: the flag is left for the worker
        JobStore(session).request_cancel(job_id)
    assert run_job(job_id, settings) == "cancelled"
    job, models = ended(settings, job_id)
    assert job.status == "cancelled" and job.model_id is None and models == 0
    assert run_job(job_id, settings) == "skipped"  # a redelivery of an ended job does nothing


def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(settings):
    settings = settings.model_copy(update={"max_job_attempts": 2})
    job_id = new_job(settings, SPEC)
    with session_scope(settings) as session:  # two deliveries whose worker died mid-job
        JobStore(session).start_attempt(job_id)
        JobStore(session).start_attempt(job_id)
    assert run_job(job_id, settings) == "failed"
    job, models = ended(settings, job_id)
    assert job.status == "failed" and "gave up after 2 attempts" in job.error and models == 0


def test_a_unit_travels_as_a_message_and_renders_the_phase_the_api_shows():
    run = RunSpec.model_validate(
        {"head": {"temperature": "auto", "temperature_grid": [0.5, 1.0, 1.5]}}
    )
    units = job_units(run, compare_baseline=True)
    assert [u.phase for u in units] == ["tau=0.5", "tau=1", "tau=1.5", "baseline"]
    assert [Unit.from_message(u.to_message()) for u in units] == units
    assert units[2].spec(run).head.temperature == 1.5
    assert units[3].spec(run).head.kind == "softmax"
    assert [u.phase for u in job_units(run.with_temperature(2.0), False)] == ["model"]
    with pytest.raises(ValueError):
        Unit("candidate")
    with pytest.raises(ValueError):
        Unit("model", 1.0)


def test_a_finished_job_stores_the_noise_report_and_label_issues_of_every_training_row(
    settings,
):
    # 3 classes; no x_val, so train() splits a validation hold-out off x_train: the
    # report and the issues still cover every uploaded row, indexed in upload order.
    rng = np.random.default_rng(1)
    n = 90
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 3)) * 0.3 + 2.0 * np.eye(3)[y]
    job_id = new_job(
        settings,
        SPEC | {"compare_baseline": True},
        {"x_train": x, "y_train": y, "x_test": x[:9], "y_test": y[:9]},
    )
    assert run_job(job_id, settings) == "succeeded"
    with session_scope(settings) as session:
        store = ModelStore(session)
        model, baseline = store.by_job(job_id, "model"), store.by_job(job_id, "baseline")
        model_row = (model.noise_report, model.label_issues_path, model.metrics)
        baseline_row = (baseline.noise_report, baseline.label_issues_path)
    report, issues_path, metrics = model_row
    assert report["num_examples"] == n and len(report["noise_std_by_class"]) == 3
    assert len(report["flip_matrix"]) == 3 and len(report["class_pairs"]) == 3
    assert {tuple(p["classes"]) for p in report["class_pairs"]} == {(0, 1), (0, 2), (1, 2)}
    assert set(metrics["reliability"]) == {"marginal", "noise_free"}
    for path in (issues_path, baseline_row[1]):
        file = ArtifactStore(settings.data_dir).resolve(path)
        arrays = np.load(file)
        assert sorted(arrays["index"].tolist()) == list(range(n))  # every uploaded row
        np.testing.assert_array_equal(arrays["given"], y[arrays["index"]])
        assert (np.diff(arrays["score"]) <= 0).all()  # most suspect first
        head = label_issues_file.read_head(file, 5)
        assert head["num_examples"] == n and len(head["issues"]) == 5
        assert head["num_flagged"] == int(arrays["flagged"].sum())
        np.testing.assert_array_equal(
            arrays["flagged"], arrays["suggested"] != arrays["given"]
        )  # the default rule: noise-free argmax != given label
    assert baseline_row[0] is None  # a softmax baseline has no noise model


def test_a_multilabel_job_stores_neither(settings):
    rng = np.random.default_rng(2)
    y = (rng.uniform(size=(40, 3)) < 0.5).astype(np.int64)
    job_id = new_job(
        settings, SPEC | {"task": "multilabel"}, {"x_train": rng.normal(size=(40, 3)), "y_train": y}
    )
    assert run_job(job_id, settings) == "succeeded"
    with session_scope(settings) as session:
        model = ModelStore(session).by_job(job_id, "model")
        assert model.noise_report is None and model.label_issues_path is None


def test_label_knowledge_in_row_chunks_equals_one_pass(monkeypatch):
    from core.dataset_files import ArrayDataset
    from models import label_knowledge as knowledge
    from models.classifier import build_classifier

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 3)).astype(np.float32), np.arange(50) % 4
    spec = RunSpec.model_validate({"head": {"num_factors": 2, "temperature": 1.0}})
    model = build_classifier(spec, [3], 4, np.zeros(3), np.ones(3))
    data = ArrayDataset(x_train=x, y_train=y, class_names=list("abcd"))
    report, whole = knowledge.label_knowledge(model, data, seed=0)
    monkeypatch.setattr(knowledge, "LABEL_ISSUE_CHUNK_ROWS", 7)
    chunked_report, chunked = knowledge.label_knowledge(model, data, seed=0)
    assert chunked_report == report
    whole, chunked = (np.load(io.BytesIO(label_issues_file.encode(*i))) for i in (whole, chunked))
    for name in ("index", "given", "suggested", "flagged"):
        np.testing.assert_array_equal(whole[name], chunked[name])
    np.testing.assert_allclose(whole["score"], chunked["score"], rtol=1e-6)
    assert knowledge.noise_report_samples(50) == 100 and knowledge.noise_report_samples(10**6) == 10
    assert knowledge.noise_report_samples(10_000) == 20


def test_unusable_backbone_weights_fail_the_job_naming_the_file_or_key(settings, tmp_path):
    # Checked by the worker before it trains (the API cannot see the worker's files).
    rng = np.random.default_rng(0)
    images = {"x_train": rng.uniform(size=(8, 3, 8, 8)), "y_train": np.arange(8) % 2}
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, weights / "cifar.pth")
    settings = settings.model_copy(update={"weights_dir": str(weights)})
    for name, expected in (
        ("r50.pth", "no such file"),
        ("cifar.pth", "'conv1.weight' has shape [64, 3, 3, 3]"),
        ("/etc/hostname", "outside HETSERVE_WEIGHTS_DIR"),
    ):
        spec = SPEC | {"backbone": {"kind": "resnet18", "weights": name, "freeze": True}}
        job_id = new_job(settings, spec, images)
        assert run_job(job_id, settings) == "failed"
        job, models = ended(settings, job_id)
        assert "WeightsError" in job.error and expected in job.error, job.error
        assert models == 0
