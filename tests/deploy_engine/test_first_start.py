"""The first-ever start of dockerd on a machine, reproduced in a network namespace of its
own with an empty data root: no docker0 yet, no network state. That is the state a fresh
CI machine is in, where `docker network inspect bridge` lists the subnet but no gateway
and the torch index used to be started with `--bind ''` (every deploy test errored).

The check runs the fixture's own code (tests/support/docker_bridge.py) inside the namespace: the address it
finds must be the bridge's, and the index server must answer on it; then the same after a
restart of that dockerd (the state every later run sees)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.compose import REPO
from tests.support.waiting import free_port, wait_until

pytestmark = pytest.mark.deploy_engine

PROBE = """
import json, sys
from pathlib import Path
from tests.support.docker_bridge import bridge_address, serve_index
env = json.loads(sys.argv[1])
address = bridge_address(env)
server = serve_index(Path(sys.argv[2]), address, int(sys.argv[3]))
server.terminate()
server.wait(timeout=10)
print(address)
"""


class FreshEngine:
    """dockerd in network namespace `name`, with data and exec roots of its own."""

    def __init__(self, name: str, root: Path):
        self.netns = f"/var/run/netns/{name}"
        self.root = root
        self.sock = root / "docker.sock"
        self.env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{self.sock}"}
        self.proc: subprocess.Popen | None = None

    def in_netns(self, *argv: str) -> list[str]:
        # nsenter, not `ip netns exec`: that also remounts /sys, hiding the cgroup
        # mounts dockerd needs ("Devices cgroup isn't mounted").
        return ["nsenter", f"--net={self.netns}", *argv]

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            self.in_netns("dockerd", "--storage-driver=vfs", "--ip=127.0.0.1",
                          "--data-root", str(self.root / "data"),
                          "--exec-root", str(self.root / "exec"),
                          "--pidfile", str(self.root / "dockerd.pid"), "-H", self.env["DOCKER_HOST"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def answers():
            assert self.proc is not None and self.proc.poll() is None, (
                self.root / "dockerd.log"
            ).read_text()[-2000:]
            return subprocess.run(["docker", "info"], env=self.env,
                                  capture_output=True, timeout=20).returncode == 0  # fmt: skip

        wait_until(answers, 90, "the namespaced dockerd", interval=1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def ipam_config(self) -> list[dict]:
        out = subprocess.run(["docker", "network", "inspect", "bridge"], env=self.env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return json.loads(out)[0]["IPAM"]["Config"]

    def probe(self, index: Path) -> str:
        """bridge_address + serve_index run inside the namespace; the address found."""
        done = subprocess.run(
            self.in_netns(sys.executable, "-c", PROBE, json.dumps(self.env), str(index),
                          str(free_port())),
            cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def fresh_engine():
    for tool in ("dockerd", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"no {tool}: make test-deploy installs docker.io (root needed)")
    name = f"hetserve-first-{os.getpid()}"
    # a short path: dockerd's containerd socket lives under the exec root (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="hs-dockerd-", dir="/tmp"))
    subprocess.run(["ip", "netns", "add", name], check=True)
    engine = FreshEngine(name, root)
    try:
        subprocess.run(engine.in_netns("ip", "link", "set", "lo", "up"), check=True)
        yield engine
    finally:
        engine.stop()
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_torch_index_listens_on_the_bridge_at_the_first_and_a_later_start(fresh_engine, tmp_path):
    index = tmp_path / "index"
    (index / "torch").mkdir(parents=True)
    assert not (fresh_engine.root / "data").exists()  # never started: no network state

    fresh_engine.start()
    first = fresh_engine.ipam_config()
    address = fresh_engine.probe(index)
    (subnet,) = [ipaddress.ip_network(c["Subnet"]) for c in first]
    assert ipaddress.ip_address(address) in subnet, (address, first)
    print(f"first start: IPAM config {first}, bridge address {address}")

    fresh_engine.stop()
    fresh_engine.start()
    again = fresh_engine.probe(index)
    assert again == address, (again, address, fresh_engine.ipam_config())
