"""The compose deployment, run for real: docker-compose.yml + docker-compose.cpu.yml +
compose.engine.yml (local base images) on a Docker engine, driven through the published
API port the way an operator would. The tests share one stack and run in file order."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.engine_images import API_IMAGE, SIZES, TIMES, WORKER_IMAGE, timed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.deploy_engine

TINY = {
    "head": {"kind": "het", "num_factors": 2, "temperature": 1.0,
             "train_mc_samples": 8, "eval_mc_samples": 16},
    "backbone": {"kind": "mlp", "hidden": [16]},
    "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
}  # fmt: skip
# Long enough per epoch to stop the worker in the middle of a job.
SLOW = {
    "head": {"kind": "het", "num_factors": 2, "temperature": 1.0,
             "train_mc_samples": 128, "eval_mc_samples": 64},
    "backbone": {"kind": "mlp", "hidden": [256, 256]},
    "train": {"epochs": 6, "batch_size": 8, "device": "cpu"},
}  # fmt: skip
FINAL = {"succeeded", "failed", "cancelled"}


def npz_bytes(n: int, features: int = 6, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, features)) + 2.0 * np.eye(features)[y % features]).astype(np.float32)
    cut = int(n * 0.75)
    buf = io.BytesIO()
    np.savez(buf, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    return buf.getvalue()


class State:
    """What the tests pass on to the later ones."""

    key: str = ""
    ids: dict[str, str] = {}


@pytest.fixture(scope="module")
def stack(engine):
    engine.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
    with timed("image builds (compose build: api + worker)"):
        engine.compose("build", timeout=3600, log="compose-build.log")
    with timed("compose up -d --build, until healthy"):
        engine.compose("up", "-d", "--build", timeout=1200, log="compose-up.log")
        engine.wait_ready()
    State.key = engine.compose("exec", "-T", "api", "cat", "/data/api_key").stdout.strip()
    assert State.key
    try:
        yield engine
    finally:
        logs = engine.compose("logs", "--no-color", timeout=120, check=False)
        (engine.log_dir / "compose-logs.txt").write_text(logs.stdout + logs.stderr)
        print(f"[deploy_engine] compose logs: {engine.log_dir / 'compose-logs.txt'}")
        with timed("compose down -v"):
            engine.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def client(engine) -> httpx.Client:
    return httpx.Client(base_url=engine.api_url, timeout=60,
                        headers={"Authorization": f"Bearer {State.key}"})  # fmt: skip


def job(c: httpx.Client, job_id: str) -> dict:
    r = c.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_final(c: httpx.Client, job_id: str, timeout: float) -> dict:
    return wait_until(lambda: (j := job(c, job_id))["status"] in FINAL and j, timeout,
                      f"job {job_id}", interval=1)  # fmt: skip


def epochs_of(history: list[dict], phase: str) -> list[int]:
    return [h["epoch"] for h in history if h["phase"] == phase]


def upload(c: httpx.Client, name: str, n: int) -> str:
    r = c.post("/v1/datasets", files={"file": (f"{name}.npz", npz_bytes(n))})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(c: httpx.Client, dataset_id: str, spec: dict, **extra) -> str:
    r = c.post("/v1/jobs", json={"dataset_id": dataset_id, **spec, **extra})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_started_once_and_healthy(stack):
    services = stack.services()
    assert len(services["migrate"]) == 1 and services["migrate"][0]["ExitCode"] == 0
    restarts = stack.docker("inspect", "--format", "{{.RestartCount}}",
                            services["migrate"][0]["ID"]).stdout.strip()  # fmt: skip
    assert restarts == "0"
    assert {row["Health"] for name in ("postgres", "redis", "api") for row in services[name]} == {
        "healthy"
    }


def test_what_the_images_promise(stack):
    uid = stack.compose("exec", "-T", "api", "id", "-u").stdout.strip()
    assert uid not in ("", "0"), uid
    no_torch = stack.compose("exec", "-T", "api", "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    ready = httpx.get(f"{stack.api_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    torch = stack.docker("run", "--rm", "--entrypoint", "python", WORKER_IMAGE, "-c",
                         "import torch; print(torch.__version__)").stdout.strip()  # fmt: skip
    assert torch.startswith("2.") and torch.endswith("+cpu"), torch
    wuid = stack.compose("exec", "-T", "worker", "id", "-u").stdout.strip()
    assert wuid not in ("", "0"), wuid
    for image in (API_IMAGE, WORKER_IMAGE):
        size = int(stack.docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
        print(f"[deploy_engine] image {image}: {size / 1e6:.0f} MB", flush=True)
        SIZES[image] = size / 1e6


def test_upload_train_with_baseline_predict_download_onnx(stack, tmp_path):
    with client(stack) as c:
        State.ids["dataset"] = dataset = upload(c, "tiny", 240)
        t0 = time.monotonic()
        State.ids["job"] = job_id = submit(c, dataset, TINY, compare_baseline=True)
        done = wait_final(c, job_id, 600)
        TIMES["small HET job with baseline"] = time.monotonic() - t0
        assert done["status"] == "succeeded", done.get("error")
        assert done["metrics"]["baseline"] and done["metrics"]["model"]
        State.ids["model"] = model = done["model_id"]
        r = c.post(f"/v1/models/{model}/predict",
                   json={"inputs": [[0.5] * 6], "mc_samples": 64, "seed": 7})  # fmt: skip
        assert r.status_code == 200, r.text
        probs = r.json()["predictions"][0]["probs"]
        assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-4
        onnx = c.get(f"/v1/models/{model}/onnx")
        assert onnx.status_code == 200, onnx.text
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx.content)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["probs"], {"input": np.full((1, 6), 0.5, np.float32)})
    assert out.shape == (1, 3) and abs(float(out.sum()) - 1) < 1e-3


def test_worker_stopped_mid_job_resumes_and_succeeds_once(stack):
    with client(stack) as c:
        dataset = upload(c, "slow", 2000)
        job_id = submit(c, dataset, SLOW)
        wait_until(lambda: len(epochs_of(job(c, job_id)["history"], "model")) >= 1, 600,
                   "a first epoch", interval=1)  # fmt: skip
        asked = time.monotonic()
        with timed("compose stop worker (mid-job)"):
            stack.compose("stop", "worker", timeout=300)
        # a warm shutdown hands the job back within a step, long before the 2 min SIGKILL
        assert time.monotonic() - asked < 60
        before = job(c, job_id)
        done_before = max(epochs_of(before["history"], "model"))
        assert before["status"] in ("queued", "running") and done_before < SLOW["train"]["epochs"]
        stack.compose("start", "worker", timeout=300)
        done = wait_final(c, job_id, 900)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2, done["attempts"]
    assert done["metrics"]["model"]["resumed_from_epoch"] >= done_before
    # every epoch once: the ones before the stop were not trained again
    assert epochs_of(done["history"], "model") == list(range(1, SLOW["train"]["epochs"] + 1))
    assert done["model_id"]
    State.ids["resumed_job"] = job_id


def test_redis_restart_loses_no_queued_job(stack):
    stack.compose("stop", "worker", timeout=300)
    with client(stack) as c:
        job_id = submit(c, State.ids["dataset"], TINY)
        assert job(c, job_id)["status"] == "queued"
        with timed("compose restart redis"):
            stack.compose("restart", "redis", timeout=300)
        stack.compose("start", "worker", timeout=300)
        stack.wait_ready()
        done = wait_final(c, job_id, 600)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 1


def test_down_then_up_keeps_datasets_jobs_and_models(stack):
    with timed("compose down + up -d (named volumes kept)"):
        stack.compose("down", timeout=300)
        assert not stack.services()
        stack.compose("up", "-d", timeout=600)
        stack.wait_ready()
    key = stack.compose("exec", "-T", "api", "cat", "/data/api_key").stdout.strip()
    assert key == State.key  # the generated key lives in the artifacts volume
    with client(stack) as c:
        assert c.get(f"/v1/datasets/{State.ids['dataset']}").status_code == 200
        for name in ("job", "resumed_job"):
            assert job(c, State.ids[name])["status"] == "succeeded"
        r = c.post(f"/v1/models/{State.ids['model']}/predict",
                   json={"inputs": [[0.5] * 6], "mc_samples": 64, "seed": 7})  # fmt: skip
        assert r.status_code == 200, r.text
        assert c.get(f"/v1/models/{State.ids['model']}/onnx").status_code == 200
