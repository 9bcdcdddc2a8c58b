"""Every command the compose file runs exists and works with the environment it passes:
the migrate, api and worker services are started here as plain processes, with their
compose `environment` (parsed from `docker compose config --format json`) and their
exact `command` / `entrypoint`, against the local Redis and PostgreSQL
(HETSERVE_TEST_REDIS_URL / HETSERVE_TEST_DATABASE_URL, set by .ci/run), and one tiny job
goes through them. What differs from the containers, and only that:

- the hosts `postgres` and `redis` become the local services (a fresh database and a
  Redis key prefix of our own, both removed afterwards);
- /data (the artifacts volume) becomes a temporary folder shared by the three;
- the API listens on a free port of 127.0.0.1 instead of 0.0.0.0:8000;
- /opt/hetserve/worker-entrypoint.py is the file the worker Dockerfile copies there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.compose import REPO, compose_config
from tests.support.scratch_stores import scratch_redis_postgres
from tests.support.waiting import free_port, wait_until

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


def image_paths() -> dict[str, str]:
    """Destination -> repository file, from the worker Dockerfile's COPY lines."""
    paths = {}
    for line in (REPO / "docker" / "worker.Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not parts[1].startswith("--") and len(parts) == 3:
            paths[parts[2]] = str(REPO / parts[1])
    return paths


@pytest.fixture
def local_backends():
    """A fresh PostgreSQL database and Redis key prefix, dropped afterwards."""
    with scratch_redis_postgres(f"deploy_{uuid.uuid4().hex[:10]}") as env:
        yield env


def service_env(service: dict, local: dict, data_dir: Path) -> dict[str, str]:
    env = dict(service["environment"])
    assert env.pop("HETSERVE_DATA_DIR") == "/data"
    assert env.pop("HETSERVE_DATABASE_URL").endswith("@postgres:5432/hetserve")
    assert env.pop("HETSERVE_BROKER_URL").startswith("redis://redis:6379/")
    base = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    return base | env | local | {"HETSERVE_DATA_DIR": str(data_dir)}


def local_argv(service: dict, port: int) -> list[str]:
    argv = [*(service.get("entrypoint") or []), *service["command"]]
    paths = image_paths()
    argv = [paths.get(arg, arg) for arg in argv]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 160)
    x = (rng.normal(size=(160, 6)) + 2.0 * y[:, None] * np.eye(6)[0]).astype(np.float32)
    np.savez(path, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    return path


def test_compose_services_run_a_job_as_plain_processes(tmp_path, local_backends):
    services = compose_config()["services"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    logs: dict[str, Path] = {}
    procs: dict[str, subprocess.Popen] = {}

    def spawn(name: str) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        env = service_env(services[name], local_backends, data_dir)
        with logs[name].open("wb") as out:
            return subprocess.Popen(local_argv(services[name], port), env=env, cwd=data_dir,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    try:
        migrate = spawn("migrate")
        assert migrate.wait(timeout=120) == 0, logs["migrate"].read_text()
        procs["api"], procs["worker"] = spawn("api"), spawn("worker")

        # the compose healthcheck itself, pointed at our port
        health = services["api"]["healthcheck"]["test"]
        assert health[0] == "CMD"
        health = [arg.replace(":8000/", f":{port}/") for arg in health[1:]]
        health_env = service_env(services["api"], local_backends, data_dir)

        def api_healthy():
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {logs[name].read_text()[-3000:]}"
            return subprocess.run(health, env=health_env, capture_output=True).returncode == 0

        wait_until(api_healthy, START_TIMEOUT_S, "the api healthcheck (/readyz)")
        wait_until(lambda: " ready." in logs["worker"].read_text(errors="replace"), START_TIMEOUT_S,
                   "the worker")  # fmt: skip
        worker_log = logs["worker"].read_text(errors="replace")
        assert "no GPU visible" in worker_log  # the entrypoint ran, then exec'd celery

        # no key configured in compose: the API generated one into the artifacts volume
        key = (data_dir / "api_key").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:  # fmt: skip
            with tiny_npz(tmp_path / "tiny.npz").open("rb") as f:
                dataset = client.post("/v1/datasets", files={"file": ("tiny.npz", f)})
            assert dataset.status_code == 201, dataset.text
            spec = {
                "dataset_id": dataset.json()["id"],
                "head": {"kind": "het", "num_factors": 2, "temperature": 1.0,
                         "train_mc_samples": 8, "eval_mc_samples": 16},
                "backbone": {"kind": "mlp", "hidden": [16]},
                "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
                "compare_baseline": False,
            }  # fmt: skip
            job = client.post("/v1/jobs", json=spec)
            assert job.status_code == 202, job.text

            def finished():
                body = client.get(f"/v1/jobs/{job.json()['id']}").json()
                return body if body["status"] in ("succeeded", "failed", "cancelled") else None

            done = wait_until(finished, 180, "the job")
            assert done["status"] == "succeeded", json.dumps(done)[:2000]
            predicted = client.post(f"/v1/models/{done['model_id']}/predict",
                                    json={"inputs": [[0.0] * 6], "mc_samples": 32, "seed": 0})  # fmt: skip
            assert predicted.status_code == 200, predicted.text
            probs = predicted.json()["predictions"][0]["probs"]
            assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-4
        # the job's log lines carry its id (structured logging in the worker)
        job_lines = [json.loads(line) for line in logs["worker"].read_text().splitlines()
                     if line.startswith("{") and done["id"] in line]  # fmt: skip
        assert job_lines and all(
            line.get("job_id") == done["id"] for line in job_lines if "job_id" in line
        )
        assert any(line.get("job_id") == done["id"] for line in job_lines)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
