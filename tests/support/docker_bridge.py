"""The host address of a Docker engine's default bridge, and the torch wheel index served
on it to image builds.

The address is read from the bridge interface itself (``ip -4 addr show docker0``), not
from the network's IPAM config: on a machine where dockerd has never run, the first
start creates ``docker0`` with its address, but ``docker network inspect bridge`` lists
only the subnet (``[{"Subnet": "172.17.0.0/16"}]``, no ``Gateway``) until the next
start. The subnet is the fallback while the interface has no address yet.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _inspect_bridge(env: dict[str, str]) -> dict:
    out = subprocess.run(["docker", "network", "inspect", "bridge"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    (network,) = json.loads(out)
    return network


def interface_ipv4(name: str) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses (with prefix) the interface holds now; [] if it has none."""
    done = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", name],
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    found = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]))
    return found


def bridge_address(env: dict[str, str], timeout: float = 30.0) -> str:
    """The address of the default bridge on the host: what containers on it (and image
    builds) reach the host at. Waits up to ``timeout`` for the interface to get it."""
    network = _inspect_bridge(env)
    name = network.get("Options", {}).get("com.docker.network.bridge.name", "docker0")
    config = (network.get("IPAM", {}).get("Config") or [{}])[0]
    subnet = ipaddress.ip_network(config["Subnet"]) if config.get("Subnet") else None
    deadline = time.monotonic() + timeout
    while True:
        for iface in interface_ipv4(name):
            if subnet is None or iface.ip in subnet:
                return str(iface.ip)
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if config.get("Gateway"):
        return str(config["Gateway"])
    raise AssertionError(f"the bridge {name} has no IPv4 address after {timeout:.0f} s "
                         f"(IPAM config {config}, interface {interface_ipv4(name)})")  # fmt: skip


def index_answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/torch/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def serve_index(index: Path, host: str, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """``python -m http.server`` over ``index`` on host:port, once it answers; raises
    AssertionError naming the address when it exits or does not answer in time."""
    log = tempfile.TemporaryFile()  # http.server logs each request: a pipe would fill up
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", host, "--directory", str(index),
         str(port)],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while server.poll() is None and not index_answers(host, port):
        if time.monotonic() > deadline:
            server.terminate()
            server.wait(timeout=10)
            break
        time.sleep(0.2)
    if server.poll() is not None:
        log.seek(0)
        err = log.read().decode(errors="replace")[-600:]
        raise AssertionError(f"the torch index could not listen on {host}:{port}: {err}")
    return server
