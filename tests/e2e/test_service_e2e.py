"""The service end to end through HTTP, with a real uvicorn and real Celery worker
processes (tests/e2e/conftest.py), on the embedded defaults and on Redis + PostgreSQL.

- a tiny job trains, exports and registers its model (and the baseline) with metrics;
- temperature "auto" fans out as a chord and keeps the best validation NLL;
- a running job cancelled stops within a few steps and registers nothing;
- a worker SIGKILLed mid-training: a new worker finishes the job from its checkpoint,
  without redoing the epochs before the kill, and registers exactly one model.
"""

from __future__ import annotations

import base64
import io
import json
import math
import signal
import time
from datetime import datetime

import numpy as np
import onnxruntime as ort
from PIL import Image

from app.artifacts import ArtifactStore, sha256_file
from app.db import session_scope
from app.store import ModelStore
from tests.support.e2e_jobs import SLOW, SMALL_HET_HEAD, job, submit, wait_for_status
from tests.support.service_client import zip_bytes
from tests.support.waiting import wait_until

TINY = {
    "head": SMALL_HET_HEAD,
    "backbone": {"kind": "mlp", "hidden": [32]},
    "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
}
REPORTED = ("test_accuracy", "test_nll", "test_ece", "test_brier")


def models_of(stack, job_id: str) -> dict[str, object]:
    with session_scope(stack.settings) as session:
        store = ModelStore(session)
        return {
            role: store.by_job(job_id, role)
            for role in ("model", "baseline")
            if store.by_job(job_id, role)
        }


def epochs_of(history: list[dict], phase: str) -> list[int]:
    return [h["epoch"] for h in history if h["phase"] == phase]


def read_events(client, job_id: str, timeout: float) -> list[tuple[str, dict]]:
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "end":
                    break
    return events


def test_tiny_job_trains_exports_and_registers_model_and_baseline(stack, datasets):
    with stack.client() as client:
        submitted = submit(client, datasets["tiny"], TINY, compare_baseline=True)
        events = read_events(client, submitted["id"], timeout=180)
        done = job(client, submitted["id"])

    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded", events[-1]
    fractions = [data["progress"]["fraction"] for name, data in events if name == "progress"]
    assert fractions == sorted(fractions)  # progress never goes back
    assert (
        done["status"] == "succeeded"
        and done["error"] is None
        and done["progress"]["fraction"] == 1.0
    )
    for phase in ("model", "baseline"):
        assert epochs_of(done["history"], phase) == [1, 2, 3]
        for name in REPORTED:
            assert math.isfinite(done["metrics"][phase][name]), (phase, name)
        assert 0 <= done["metrics"][phase]["test_accuracy"] <= 1
    assert (
        done["metrics"]["model"]["head"] == "het"
        and done["metrics"]["baseline"]["head"] == "softmax"
    )

    registered = models_of(stack, done["id"])
    assert set(registered) == {"model", "baseline"}
    assert (
        registered["model"].id == done["model_id"]
        and registered["baseline"].id == done["baseline_model_id"]
    )
    assert registered["model"].baseline_metrics == done["metrics"]["baseline"]
    for role, row in registered.items():
        path = ArtifactStore(stack.data_dir).resolve(row.onnx_path)
        assert sha256_file(path) == row.onnx_sha256, role
        # The registered file is a working model: probabilities over the 2 classes.
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
        (probs,) = session.run(["probs"], {"input": x})
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not (stack.data_dir / "checkpoints" / done["id"]).exists()


def test_auto_temperature_fans_out_and_keeps_the_best_validation_nll(stack, datasets):
    head = TINY["head"] | {"temperature": "auto", "temperature_grid": [0.5, 2.0]}
    with stack.client() as client:
        submitted = submit(
            client, datasets["tiny"], TINY | {"train": TINY["train"] | {"epochs": 2}}, head=head
        )
        done = wait_for_status(
            client, submitted["id"], {"succeeded", "failed", "cancelled"}, timeout=180
        )
    assert done["status"] == "succeeded", done["error"]
    candidates = done["metrics"]["candidates"]
    assert sorted(c["temperature"] for c in candidates) == [0.5, 2.0]
    best = min(candidates, key=lambda c: c["val_nll"])
    assert [c["chosen"] for c in candidates] == [c is best for c in candidates]
    assert done["metrics"]["model"]["temperature"] == best["temperature"]
    assert done["metrics"]["model"]["val_nll"] == best["val_nll"]
    assert epochs_of(done["history"], "tau=0.5") == [1, 2] and epochs_of(
        done["history"], "tau=2"
    ) == [1, 2]
    assert set(models_of(stack, done["id"])) == {"model"}


def test_cancel_a_running_job_stops_it_within_a_few_steps(stack, datasets):
    epochs = 200
    with stack.client() as client:
        submitted = submit(
            client, datasets["slow"], SLOW | {"train": SLOW["train"] | {"epochs": epochs}}
        )
        wait_until(lambda: len(job(client, submitted["id"])["history"]) >= 1, 120, "a first epoch")
        at_cancel = len(job(client, submitted["id"])["history"])
        r = client.post(f"/v1/jobs/{submitted['id']}/cancel")
        assert r.status_code == 202
        asked = time.monotonic()
        done = wait_for_status(
            client, submitted["id"], {"cancelled", "succeeded", "failed"}, timeout=30
        )
        took = time.monotonic() - asked

    assert done["status"] == "cancelled", done
    # The flag is read every 0.2 s: the job ends within about one epoch of the request.
    assert len(done["history"]) <= at_cancel + 2, (at_cancel, len(done["history"]))
    assert took < 15
    assert done["model_id"] is None and models_of(stack, done["id"]) == {}
    assert not (stack.data_dir / "checkpoints" / done["id"]).exists()


def test_sigkilled_worker_job_resumes_from_checkpoint_on_a_new_worker(stack, datasets):
    epochs = 12
    with stack.client() as client:
        submitted = submit(
            client, datasets["slow"], SLOW | {"train": SLOW["train"] | {"epochs": epochs}}
        )
        wait_until(lambda: len(job(client, submitted["id"])["history"]) >= 2, 120, "two epochs")
        (worker,) = [w for w in stack.workers if w.poll() is None]
        stack.kill_worker(worker)
        before = job(client, submitted["id"])
        done_before_kill = max(epochs_of(before["history"], "model"))
        assert before["status"] == "running" and done_before_kill < epochs

        if stack.backend == "redis-postgres":
            # Redis hands an unacknowledged message out again once its visibility timeout
            # passed; a starting worker looks for such messages at once.
            started = datetime.fromisoformat(before["started_at"]).timestamp()
            visibility = stack.settings.broker_visibility_timeout_s
            time.sleep(max(0.0, started + visibility + 1 - time.time()))
        stack.start_worker()
        done = wait_for_status(
            client, submitted["id"], {"succeeded", "failed", "cancelled"}, timeout=180
        )

    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    resumed = done["metrics"]["model"]["resumed_from_epoch"]
    assert resumed >= done_before_kill  # training restarted after the last checkpoint
    # Every epoch appears once: the epochs before the kill were not trained again.
    assert epochs_of(done["history"], "model") == list(range(1, epochs + 1))
    assert len(models_of(stack, done["id"])) == 1 and done["model_id"] is not None


def test_sigtermed_worker_hands_its_job_back_at_once(stack, datasets):
    """A warm shutdown (docker stop, an upgrade) must not strand a running job until the
    broker's visibility timeout: the worker stops within a step and requeues the message."""
    epochs = 12
    with stack.client() as client:
        submitted = submit(
            client, datasets["slow"], SLOW | {"train": SLOW["train"] | {"epochs": epochs}}
        )
        wait_until(lambda: len(job(client, submitted["id"])["history"]) >= 1, 120, "an epoch")
        (worker,) = [w for w in stack.workers if w.poll() is None]
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        stopped_after = time.monotonic() - asked
        before = job(client, submitted["id"])
        assert before["status"] == "running" and before["attempts"] == 1

        stack.start_worker()
        # Well inside the visibility timeout: the message was handed back, not lost.
        wait_until(
            lambda: job(client, submitted["id"])["attempts"] == 2,
            stack.settings.broker_visibility_timeout_s / 2,
            "the second attempt",
        )
        done = wait_for_status(
            client, submitted["id"], {"succeeded", "failed", "cancelled"}, timeout=180
        )

    assert stopped_after < 20, stopped_after  # did not train the remaining epochs first
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert epochs_of(done["history"], "model") == list(range(1, epochs + 1))
    assert len(models_of(stack, done["id"])) == 1


def test_image_zip_trains_a_cnn_and_serves_base64_images(stack):
    """The image path end to end: zip upload decoded by Pillow, a cnn job, an exported
    4-D graph, and predict's `images` preprocessed exactly as the upload was."""
    rng = np.random.default_rng(0)
    colors = {"red": (200, 30, 30), "blue": (30, 30, 200)}

    def noisy_png(color) -> bytes:
        pixels = np.clip(np.array(color) + rng.normal(0, 25, (12, 12, 3)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    entries = {
        f"{split}/{name}/{i}.png": noisy_png(color)
        for split, count in (("train", 16), ("test", 4))
        for name, color in colors.items()
        for i in range(count)
    }
    spec = {
        "head": {"kind": "het", "num_factors": 1, "train_mc_samples": 8, "eval_mc_samples": 64},
        "backbone": {"kind": "cnn"},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    }
    with stack.client() as client:
        r = client.post(
            "/v1/datasets",
            files={"file": ("colors.zip", zip_bytes(entries))},
            data={"image_size": "8"},
        )
        assert r.status_code == 201, r.text
        dataset = r.json()
        assert dataset["input_shape"] == [3, 8, 8] and dataset["class_names"] == ["blue", "red"]
        submitted = submit(client, dataset["id"], spec)
        done = wait_for_status(
            client, submitted["id"], {"succeeded", "failed", "cancelled"}, timeout=180
        )
        assert done["status"] == "succeeded", done["error"]

        red = entries["test/red/0.png"]
        by_image = client.post(
            f"/v1/models/{done['model_id']}/predict",
            json={"images": [base64.b64encode(red).decode()], "seed": 3},
        )
        assert by_image.status_code == 200, by_image.text
        # The same pixels sent as numbers, decoded the way training decoded them.
        pixels = (
            Image.open(io.BytesIO(red)).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
        )
        x = (np.asarray(pixels, dtype=np.float32) / 255.0).transpose(2, 0, 1)
        by_inputs = client.post(
            f"/v1/models/{done['model_id']}/predict", json={"inputs": [x.tolist()], "seed": 3}
        )
        assert by_inputs.status_code == 200, by_inputs.text

    row = by_image.json()["predictions"][0]
    assert len(row["probs"]) == 2 and abs(sum(row["probs"]) - 1) < 1e-5
    assert row["probs"] == by_inputs.json()["predictions"][0]["probs"]


def test_multilabel_job_trains_a_sigmoid_het_head_and_serves_per_label_outputs(stack, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype(np.float32)
    y = (x[:, :3] + rng.normal(0, 0.5, (160, 3)) > 0).astype(np.int64)  # 3 labels
    path = tmp_path / "multi.npz"
    np.savez(path, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    with stack.client() as client:
        r = client.post("/v1/datasets", files={"file": ("multi.npz", path.read_bytes())})
        assert r.status_code == 201, r.text
        assert r.json()["task"] == "multilabel" and r.json()["num_classes"] == 3
        submitted = submit(client, r.json()["id"], TINY | {"task": "multilabel"})
        done = wait_for_status(
            client, submitted["id"], {"succeeded", "failed", "cancelled"}, timeout=180
        )
        assert done["status"] == "succeeded", done["error"]
        metrics = done["metrics"]["model"]
        assert 0 <= metrics["test_mean_average_precision"] <= 1 and metrics["test_nll"] > 0
        answer = client.post(
            f"/v1/models/{done['model_id']}/predict", json={"inputs": x[:2].tolist(), "seed": 1}
        )
    assert answer.status_code == 200, answer.text
    for row in answer.json()["predictions"]:
        # Independent sigmoids: each label's probability in (0, 1), no sum-to-one,
        # and one binary entropy per label.
        assert len(row["probs"]) == 3 and all(0 < p < 1 for p in row["probs"])
        assert len(row["entropy"]) == 3 and len(row["expected_entropy"]) == 3
