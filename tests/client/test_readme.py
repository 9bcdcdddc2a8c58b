"""The walk-through's console blocks run as written on a fresh folder against a real
`hetserve up` (API + worker processes): the README's Train and Predict blocks, then
docs/training-and-operations.md's REST version of them, every `$ ` command, continuation
lines included, in one bash with `set -euo pipefail`. Only the port differs (a free one
instead of 8000). Every console block of the README is one of them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


# (file, heading): the console blocks that run, in this order, in one shell.
WALK_THROUGH = [
    ("README.md", "Train"),
    ("README.md", "Predict"),
    ("docs/training-and-operations.md", "The README's walk-through over REST"),
]
CONSOLE = re.compile(r"```console\n(.*?)```", re.S)


def console_block(doc: str, heading: str) -> str:
    """The first console block under the heading, before any other heading."""
    text = (REPO / doc).read_text()
    title = re.search(rf"^#+ {re.escape(heading)}\n", text, re.M)
    assert title, f"{doc}: no heading {heading!r}"
    block = CONSOLE.search(text, title.end())
    assert block and not re.search(r"^#+ ", text[title.end() : block.start()], re.M), (
        f"{doc}: no console block under {heading!r}"
    )
    return block.group(1)


def console_commands(doc: str, heading: str) -> list[str]:
    commands, current = [], None
    for line in console_block(doc, heading).splitlines():
        if line.startswith("$ "):
            current = [line[2:]]
            commands.append(current)
        elif current is not None and current[-1].endswith("\\"):
            current.append(line)
        else:
            current = None
    return ["\n".join(c) for c in commands]


def walk_through() -> list[str]:
    return [c for doc, heading in WALK_THROUGH for c in console_commands(doc, heading)]


def test_the_walk_through_blocks_are_found():
    train, predict, rest = (console_commands(doc, heading) for doc, heading in WALK_THROUGH)
    assert train[0].startswith("hetserve demo-data digits.npz")
    assert any(c.startswith("MODEL=$(hetserve train") for c in train)
    assert any("--predictive noise_free" in c for c in predict)
    assert any("curl" in c and "/v1/jobs" in c for c in rest)
    assert any("curl" in c and "/predict" in c for c in rest)


def test_every_readme_console_block_runs():
    readme = CONSOLE.findall((REPO / "README.md").read_text())
    running = [console_block(doc, heading) for doc, heading in WALK_THROUGH]
    assert readme and [b for b in readme if b not in running] == []


@pytest.mark.slow
def test_readme_train_and_predict_run_as_written(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    env |= {"HETSERVE_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"}  # fmt: skip
    (tmp_path / ".venv").symlink_to(VENV)  # what `make run` leaves in a fresh clone
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(["hetserve", "up"], cwd=tmp_path, env=env, stdout=log,
                          stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: "hetserve is up" in (tmp_path / "up.log").read_text()
                   or up.poll() is not None, 120, "hetserve up")  # fmt: skip
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        commands = walk_through()
        assert any("--predictive noise_free" in c for c in commands)
        script = ["set -euo pipefail"]
        for command in commands:
            script += [f"echo {shlex.quote('>>> ' + command.splitlines()[0][:60])} >&2",
                       command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")]  # fmt: skip
        script.append('echo; echo "MODEL=$MODEL"')
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert re.search(r"^MODEL=[0-9a-f]{32}$", done.stdout, re.M), done.stdout
        # curl -s exits 0 on a 4xx/5xx: an error body ({"detail": ...}) is the failure
        assert '"detail"' not in done.stdout, done.stdout[-3000:]
        assert '"num_classes":10' in done.stdout and '"status":"queued"' in done.stdout
        assert "event: end" in done.stdout  # the events stream ran to the job's end
        assert done.stdout.count("predicted ") >= 2 and '"correlated_pairs"' in done.stdout
        print(done.stdout[-2500:])
    finally:
        up.terminate()
        up.wait(timeout=60)
        log.close()
