"""docker-compose.yml checked by the real Docker Compose binary (`config`), then the
parsed configuration checked for what the deployment promises."""

from __future__ import annotations

import json
import re

import pytest

from app.settings import Settings
from tests.support.compose import COMPOSE_FILE, CPU_OVERRIDE, REPO, compose_config, run_compose

HETSERVE_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


@pytest.fixture(scope="module")
def cpu_config() -> dict:
    return compose_config(files=(COMPOSE_FILE, CPU_OVERRIDE))


def test_config_fails_without_the_postgres_password():
    done = run_compose("config", "--quiet", env={})
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr


@pytest.mark.parametrize(
    ("breakage", "old", "new", "message"),
    [
        ("depends on a service that does not exist", "      migrate:\n        condition: service_completed_successfully",
         "      migrations:\n        condition: service_completed_successfully", "migrations"),
        ("misspelt key", "    healthcheck:\n      test: [\"CMD\", \"redis-cli\", \"ping\"]\n      interval: 5s",
         "    healthcheck:\n      test: [\"CMD\", \"redis-cli\", \"ping\"]\n      intervall: 5s", "intervall"),
    ],
)  # fmt: skip
def test_a_broken_copy_fails_the_check(tmp_path, breakage, old, new, message):
    """The check can fail: the same binary rejects a deliberately broken copy."""
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the breakage '{breakage}' no longer applies to docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    done = run_compose("config", "--quiet", files=(broken,), cwd=tmp_path)
    assert done.returncode != 0, breakage
    assert message in done.stderr


def test_services_and_start_order(config):
    services = config["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "flower"}
    assert services["flower"]["profiles"] == ["flower"]
    assert services["migrate"]["command"] == ["hetserve", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        depends = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert depends == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }
        assert services[name]["restart"] == "unless-stopped"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name


def test_contract_commands(config):
    services = config["services"]
    api = services["api"]["command"]
    assert api[:2] == ["uvicorn", "app.main:app"]
    env = services["api"]["environment"]
    assert api[2:] == ["--host", env["HETSERVE_HOST"], "--port", env["HETSERVE_PORT"]]
    assert services["worker"]["command"] == [
        "celery", "-A", "worker.celery_app:celery_app", "worker",
        "--pool=solo", "--concurrency=1", "-Q", "train", "--loglevel=INFO",
    ]  # fmt: skip


def test_gpu_reservation_and_shared_volumes(config, cpu_config):
    worker = config["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == -1  # all: each replica claims one GPU in its entrypoint
    assert worker["entrypoint"] == ["python", "/opt/hetserve/worker-entrypoint.py"]
    mounts = {s: {(v["source"], v["target"]) for v in config["services"][s]["volumes"]}
              for s in HETSERVE_SERVICES}  # fmt: skip
    for name in HETSERVE_SERVICES:
        assert ("artifacts", "/data") in mounts[name], name
    assert ("gpu-slots", "/var/lib/hetserve/gpu-slots") in mounts["worker"]
    assert ("pgdata", "/var/lib/postgresql/data") in {
        (v["source"], v["target"]) for v in config["services"]["postgres"]["volumes"]
    }
    assert {"pgdata", "artifacts", "redisdata", "gpu-slots"} <= set(config["volumes"])

    cpu_worker = cpu_config["services"]["worker"]
    assert not cpu_worker["deploy"]["resources"]["reservations"].get("devices")
    assert cpu_worker["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cpu_worker["image"] != worker["image"]
    assert cpu_worker["environment"]["WORKER_GPUS"] == ""


def test_every_hetserve_variable_passed_is_a_setting(config):
    """A misspelt HETSERVE_ name would be silently ignored by pydantic-settings."""
    fields = {f"HETSERVE_{name.upper()}" for name in Settings.model_fields}
    for name in HETSERVE_SERVICES:
        env = config["services"][name]["environment"]
        assert {k for k in env if k.startswith("HETSERVE_")} <= fields, name
        assert env["HETSERVE_DATA_DIR"] == "/data"
        assert env["HETSERVE_DATABASE_URL"].startswith("postgresql+psycopg://hetserve:")
        assert env["HETSERVE_DATABASE_URL"].endswith("@postgres:5432/hetserve")
        assert env["HETSERVE_BROKER_URL"].startswith("redis://redis:6379/")
    assert config["services"]["api"]["environment"]["HETSERVE_AUTO_MIGRATE"] == "false"


def test_images_are_pinned(config):
    """Third-party images by exact release (postgres numbers releases major.minor) or
    digest, never a floating tag; ours are built here."""
    for name, service in config["services"].items():
        image = service["image"]
        if name in HETSERVE_SERVICES:
            assert "build" in service, name
            continue
        assert "@sha256:" in image or re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?(-\w+)?", image), (
            image
        )


def test_multi_host_overrides(config):
    """docs/deploy.md's extra-GPU-host recipe: NFS artifacts everywhere, stores
    published on the main host's private address, workers elsewhere pointed at them."""
    nfs, expose, remote = (
        REPO / "docker" / f"compose.{name}.yml"
        for name in ("nfs", "expose-stores", "remote-worker")
    )
    addresses = {"NFS_SERVER": "10.0.0.9", "PRIVATE_ADDR": "10.0.0.5", "MAIN_HOST_ADDR": "10.0.0.5"}
    main = compose_config(files=(COMPOSE_FILE, nfs, expose), env=addresses)
    assert main["volumes"]["artifacts"]["driver_opts"]["type"] == "nfs"
    assert "addr=10.0.0.9" in main["volumes"]["artifacts"]["driver_opts"]["o"]
    for name, port in (("postgres", 5432), ("redis", 6379)):
        (published,) = main["services"][name]["ports"]
        assert (published["host_ip"], published["target"]) == ("10.0.0.5", port)
    assert "ports" not in config["services"]["postgres"]  # not published by default

    extra = compose_config(files=(COMPOSE_FILE, nfs, remote), env=addresses)
    worker = extra["services"]["worker"]
    assert not worker.get("depends_on")
    assert worker["environment"]["HETSERVE_DATABASE_URL"].endswith("@10.0.0.5:5432/hetserve")
    assert worker["environment"]["HETSERVE_BROKER_URL"] == "redis://10.0.0.5:6379/0"
    assert worker["command"] == config["services"]["worker"]["command"]
    missing = run_compose("config", "--quiet", files=(COMPOSE_FILE, remote))
    assert missing.returncode != 0 and "MAIN_HOST_ADDR" in missing.stderr


def test_quick_start_env_file_reaches_the_containers(tmp_path):
    """deploy.md's quick start: cp .env.example .env, set the password, uncomment a setting.
    The setting reaches the hetserve containers; a deployment-fixed one does not override."""
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    env_text = (REPO / ".env.example").read_text()
    env_text = env_text.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=0123abcd\n")
    env_text = env_text.replace(
        "# HETSERVE_JOB_TIME_LIMIT_S=21600", "HETSERVE_JOB_TIME_LIMIT_S=600"
    )
    env_text = env_text.replace("# HETSERVE_DATA_DIR=var", "HETSERVE_DATA_DIR=var")
    (tmp_path / ".env").write_text(env_text)
    done = run_compose("config", "--format", "json", files=(tmp_path / "docker-compose.yml",),
                       env={}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name in HETSERVE_SERVICES:
        env = services[name]["environment"]
        assert env["HETSERVE_JOB_TIME_LIMIT_S"] == "600", name
        assert env["HETSERVE_DATA_DIR"] == "/data", name
        assert (
            env["HETSERVE_DATABASE_URL"]
            == "postgresql+psycopg://hetserve:0123abcd@postgres:5432/hetserve"
        )
        assert "HETSERVE_MAX_UPLOAD_BYTES" not in env  # commented out: the built-in default
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "0123abcd"
