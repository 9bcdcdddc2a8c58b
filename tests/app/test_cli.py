"""The hetserve CLI: `hetserve up` as a real process tree (API + worker) on a temporary data
folder, a dataset upload and a training job through the CLI against it, a clean stop on
SIGTERM; plus the pieces that need no server (spec flags, metrics table)."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from app import cli
from app.cli import connect
from app.cli.jobs import build_spec, metrics_table
from app.cli.output import redact
from app.cli.parser import build_parser
from app.cli.up import api_process
from tests.support.blob_datasets import blobs_npz
from tests.support.waiting import free_port, wait_until

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
        uploaded = run_cli(env, "datasets", "upload", str(blobs_npz(tmp_path / "t.npz")), "--json")
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
        # the hint says where the key lives and how to pass one, even one starting with '-'
        assert str(tmp_path / "var" / "api_key") in refused.stderr
        assert "--key=KEY" in refused.stderr and "HETSERVE_API_KEY" in refused.stderr
        for argv in (["--key", "-wrong"], ["--key=-wrong"]):
            refused = run_cli(env, "jobs", "show", job_id, *argv)
            assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr
            assert "key taken from --key" in refused.stderr

        # models, aliases, predict from .npy and .csv files, datasets show
        model_id = shown["model_id"]
        assert model_id in run_cli(env, "models", "ls").stdout
        assert "| test_accuracy |" in run_cli(env, "models", "show", model_id).stdout
        aliased = run_cli(env, "aliases", "set", "prod", model_id)
        assert aliased.stdout.strip() == f"prod -> {model_id}", aliased.stderr
        assert f"prod  -> {model_id}" in run_cli(env, "aliases", "ls").stdout
        np.save(tmp_path / "x.npy", 4 * np.eye(3, 4, dtype=np.float32))
        answer = run_cli(env, "predict", "prod", str(tmp_path / "x.npy"), "--seed", "1",
                         "--top-k", "2", "--json")  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        rows = json.loads(answer.stdout)["predictions"]
        assert len(rows) == 3 and all(len(r["top_k"]) == 2 for r in rows)
        (tmp_path / "x.csv").write_text("f0,f1,label,f2,f3\n4,0,0,0,0\n0,4,1,0,0\n")
        answer = run_cli(env, "predict", "prod", str(tmp_path / "x.csv"), "--mc-samples", "32")
        assert answer.returncode == 0, answer.stderr
        assert "S=32 samples" in answer.stdout and answer.stdout.count("predicted ") == 2
        assert "train/val/test 90/30/30" in run_cli(env, "datasets", "show", dataset["id"]).stdout

        # a reader that leaves early (| head) ends the command quietly, no traceback
        np.save(tmp_path / "many.npy", np.zeros((1000, 4), dtype=np.float32))
        piped = subprocess.run(
            f"'{HETSERVE}' predict prod '{tmp_path / 'many.npy'}' --json | head -c 10",
            shell=True, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert piped.stdout == '{\n  "model' and piped.stderr == ""
        shown_head = subprocess.run(f"'{HETSERVE}' jobs show {job_id} | head -1", shell=True,
                                    env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert shown_head.stdout == f"job {job_id}: succeeded\n" and shown_head.stderr == ""

        # -q: only the model id, for MODEL=$(hetserve train ... -q)
        quiet = run_cli(
            env, "train", "--dataset", dataset["id"], "--epochs", "1", "--num-factors", "2",
            "--temperature", "1.0", "--train-mc-samples", "8", "--eval-mc-samples", "16",
            "--device", "cpu", "-q",
        )  # fmt: skip
        assert quiet.returncode == 0, quiet.stderr
        assert re.fullmatch(r"[0-9a-f]{32}\n", quiet.stdout) and quiet.stderr == ""

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


def test_up_runs_the_api_workers_setting_with_one_fresh_metrics_folder(tmp_path):
    from app.settings import Settings

    env = {"PATH": "/bin"}
    argv, api_env = api_process(Settings(data_dir=tmp_path, api_workers=3), tmp_path, env)
    assert argv[argv.index("--workers") + 1] == "3" and "app.main:app" in argv
    folder = tmp_path / "metrics"
    assert api_env["PROMETHEUS_MULTIPROC_DIR"] == str(folder) and folder.is_dir()
    (folder / "counter_123.db").write_bytes(b"a previous run's values")
    api_process(Settings(data_dir=tmp_path, api_workers=2), tmp_path, env)
    assert not any(folder.iterdir())  # emptied for each start
    argv, api_env = api_process(Settings(data_dir=tmp_path, api_workers=1), tmp_path, env)
    assert argv[argv.index("--workers") + 1] == "1" and "PROMETHEUS_MULTIPROC_DIR" not in api_env
    assert api_env["HETSERVE_AUTO_MIGRATE"] == "false" and env == {"PATH": "/bin"}
    assert Settings(data_dir=tmp_path, api_workers=0).resolved_api_workers >= 1


def test_up_refuses_a_taken_port_and_prints_nothing_misleading(tmp_path):
    """Another service (here one that answers /healthz like hetserve) holds the port: `up`
    says so and exits 1 before starting anything; no banner, no key."""

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        port = other.server_address[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
        env |= {"HETSERVE_DATA_DIR": str(tmp_path / "var"), "HETSERVE_PORT": str(port)}
        done = subprocess.run([str(HETSERVE), "up"], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    finally:
        other.shutdown()
        other.server_close()
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "HETSERVE_PORT" in done.stderr
    assert "is up" not in done.stdout + done.stderr and "API key" not in done.stdout
    assert not (tmp_path / "var" / "api_key").exists()  # nothing started, no key made


def test_up_exits_nonzero_when_a_child_cannot_start(tmp_path):
    """The worker cannot start (its broker URL is unusable): `up` stops the API and
    reports failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    env |= {"HETSERVE_DATA_DIR": str(tmp_path), "HETSERVE_PORT": str(free_port()),
            "HETSERVE_BROKER_URL": "nosuchtransport://x"}  # fmt: skip
    done = subprocess.run([str(HETSERVE), "up"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "worker exited" in done.stderr


def parse_train(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--dataset", "d1", *argv])


def test_train_flags_override_the_spec_json(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"head": {"kind": "het", "num_factors": 8},
                                     "train": {"epochs": 50, "lr": 0.01}}))  # fmt: skip
    spec = build_spec(parse_train("--spec", f"@{spec_file}", "--epochs", "3",
                                  "--temperature", "auto", "--no-compare-baseline"))  # fmt: skip
    assert spec == {
        "dataset_id": "d1",
        "head": {"kind": "het", "num_factors": 8, "temperature": "auto"},
        "train": {"epochs": 3, "lr": 0.01},
        "compare_baseline": False,
    }
    assert build_spec(parse_train("--temperature", "1.5"))["head"] == {"temperature": 1.5}
    with pytest.raises(SystemExit):
        parse_train("--temperature", "warm")


def test_metrics_table_puts_model_and_baseline_side_by_side():
    table = metrics_table(
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
        redact("postgresql+psycopg://u:s3cret@db:5432/x") == "postgresql+psycopg://u:***@db:5432/x"
    )
    assert redact("sqlite:////var/h.db") == "sqlite:////var/h.db"


def test_models_noise_and_label_issues_against_a_stub(monkeypatch, capsys):
    """The two model reports, coded against the HTTP contract (a stub service)."""
    import hetserve

    answers = {
        "/v1/models/prod/noise": {
            "model_id": "m1", "num_examples": 90, "flip_matrix": None,
            "class_pairs": [{"classes": [1, 2], "class_names": ["b", "c"], "flip_rate": 0.25,
                             "correlation": -0.5}],
            "noise_std_by_class": [0.1, 0.9, 0.8],
        },
        "/v1/models/prod/label-issues": {
            "model_id": "m1", "dataset_id": "d1", "num_examples": 90, "num_flagged": 7,
            "issues": [{"index": 12, "given_label": 2, "suggested_label": 1, "score": 0.9}],
        },
    }  # fmt: skip
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=answers[request.url.path])

    def stub_client(url, key, **kwargs):
        return hetserve.Client(url, key, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(connect, "Client", stub_client)
    assert cli.main(["models", "noise", "prod", "--url", "http://svc", "--key", "-k"]) == 0
    out = capsys.readouterr().out
    assert "label noise over 90 training inputs" in out and "| b ↔ c | 0.2500 | -0.5000 |" in out
    assert cli.main(["models", "label-issues", "prod", "--url", "http://svc", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "7 of 90 training rows flagged" in out and "| 12 | 2 | 1 | 0.9000 |" in out
    assert seen[0].headers["authorization"] == "Bearer -k" and seen[1].url.params["limit"] == "5"
