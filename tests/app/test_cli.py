"""The hetserve CLI: `hetserve up` as a real process tree (API + worker) on a temporary data
folder, a dataset upload and a training job through the CLI against it, a clean stop on
SIGTERM; plus the pieces that need no server (spec flags, metrics table)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from app import cli
from tests.waiting import free_port, wait_until

HETSERVE = Path(sys.executable).with_name("hetserve")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tiny_dataset(path: Path) -> Path:
    """3 well-separated Gaussian classes in 4 dimensions."""
    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(3, 4)

    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 4))).astype(np.float32), y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(90), split(30), split(30)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test, class_names=np.array(["a", "b", "c"]))  # fmt: skip
    return path


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HETSERVE), *args], env=env, capture_output=True, text=True, timeout=240
    )


def test_up_serves_trains_through_the_cli_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    env |= {"HETSERVE_DATA_DIR": str(tmp_path / "var"), "HETSERVE_PORT": str(port)}
    # files, not pipes: nobody drains a pipe while the test waits, and a full one blocks
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        up = subprocess.Popen([str(HETSERVE), "up"], env=env, cwd=tmp_path, stdout=stdout,
                              stderr=stderr)  # fmt: skip
    try:
        wait_until(
            lambda: "hetserve is up" in out.read_text() or up.poll() is not None, 120, "the banner"
        )
        assert up.poll() is None, err.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        children = children_of(up.pid)
        assert len(children) == 2, children  # the API and the worker
        key = (tmp_path / "var" / "api_key").read_text().strip()
        assert oct((tmp_path / "var" / "api_key").stat().st_mode & 0o777) == "0o600"
        assert f"API key  {key}" in out.read_text()

        # the CLI finds URL (HETSERVE_PORT) and key (the data folder's key file) by itself
        uploaded = run_cli(
            env, "datasets", "upload", str(tiny_dataset(tmp_path / "t.npz")), "--json"
        )
        assert uploaded.returncode == 0, uploaded.stderr
        dataset = json.loads(uploaded.stdout)
        assert (dataset["num_train"], dataset["num_classes"]) == (90, 3)

        trained = run_cli(
            env, "train", "--dataset", dataset["id"], "--epochs", "2", "--num-factors", "2",
            "--temperature", "1.0", "--train-mc-samples", "8", "--eval-mc-samples", "16",
            "--batch-size", "32", "--device", "cpu", "--no-compare-baseline",
        )  # fmt: skip
        assert trained.returncode == 0, trained.stdout + trained.stderr
        job_id = trained.stdout.split()[1]
        assert "succeeded" in trained.stdout and "test_accuracy" in trained.stdout
        # not a terminal: one progress line per change, ending at 100 %
        bars = [line for line in trained.stderr.splitlines() if line.startswith("[")]
        assert bars and bars[-1].startswith("[" + "#" * 30 + "]") and "succeeded" in bars[-1]

        shown = json.loads(run_cli(env, "jobs", "show", job_id, "--json").stdout)
        assert shown["status"] == "succeeded" and shown["model_id"]
        assert [h["epoch"] for h in shown["history"]][-1] == 2
        listed = run_cli(env, "jobs", "ls").stdout
        assert job_id in listed and "succeeded" in listed
        refused = run_cli(env, "jobs", "show", job_id, "--key", "wrong")
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr

        # demo: the noisy-digits benchmark, HET and baseline side by side, one prediction
        demo = run_cli(env, "demo", "--epochs", "1")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "| metric | model | baseline |" in demo.stdout
        assert "| test_nll |" in demo.stdout
        predicted = demo.stdout[demo.stdout.index("one test image") :]
        assert re.search(r"predicted \d \(class \d\), confidence [01]\.\d{3}", predicted)
        assert re.search(r"top 3: \d [01]\.\d{3}, \d [01]\.\d{3}, \d [01]\.\d{3}", predicted)
        assert re.search(
            r"latent correlation of likely class pairs: \(\d, \d\) [+-][01]\.\d\d", predicted
        )

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert not [pid for pid in children if alive(pid)]
    assert "hetserve stopped" in out.read_text()


def test_up_exits_nonzero_when_a_child_cannot_start(tmp_path):
    """The port is taken: the API dies, `up` stops the worker and reports failure."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
        env |= {"HETSERVE_DATA_DIR": str(tmp_path), "HETSERVE_PORT": str(taken.getsockname()[1])}
        done = subprocess.run([str(HETSERVE), "up"], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "api exited" in done.stderr


def parse_train(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", "--dataset", "d1", *argv])


def test_train_flags_override_the_spec_json(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"head": {"kind": "het", "num_factors": 8},
                                     "train": {"epochs": 50, "lr": 0.01}}))  # fmt: skip
    spec = cli.build_spec(parse_train("--spec", f"@{spec_file}", "--epochs", "3",
                                      "--temperature", "auto", "--no-compare-baseline"))  # fmt: skip
    assert spec == {
        "dataset_id": "d1",
        "head": {"kind": "het", "num_factors": 8, "temperature": "auto"},
        "train": {"epochs": 3, "lr": 0.01},
        "compare_baseline": False,
    }
    assert cli.build_spec(parse_train("--temperature", "1.5"))["head"] == {"temperature": 1.5}
    with pytest.raises(SystemExit):
        parse_train("--temperature", "warm")


def test_metrics_table_puts_model_and_baseline_side_by_side():
    table = cli.metrics_table(
        {
            "model": {"test_accuracy": 0.845, "test_nll": 0.468},
            "baseline": {"test_accuracy": 0.764, "test_nll": 0.561},
        }  # fmt: skip
    )
    assert table.splitlines() == [
        "| metric | model | baseline |",
        "|---|---:|---:|",
        "| test_accuracy | 0.8450 | 0.7640 |",
        "| test_nll | 0.4680 | 0.5610 |",
    ]


def test_redact_hides_the_database_password():
    assert (
        cli._redact("postgresql+psycopg://u:s3cret@db:5432/x")
        == "postgresql+psycopg://u:***@db:5432/x"
    )
    assert cli._redact("sqlite:////var/h.db") == "sqlite:////var/h.db"
