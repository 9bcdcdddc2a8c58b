"""The API image's dependency set, installed the way docker/api.Dockerfile installs it
(the base dependencies of pyproject.toml, then the project with --no-deps) into a fresh
`python -m venv` with this machine's pip configuration, serves a prediction with no torch
present: the fresh venv's own uvicorn runs app.main:app on a model exported here (with
models.export, in the main venv), and its seeded answer equals onnxruntime's in the main
venv bit for bit.

Slow (one to two minutes on 2 cores, almost all of it pip): it runs with the other
deployment checks in `make test-deploy` (marker `deploy_engine`), which .ci/run calls after
`make test`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.compose import REPO
from tests.support.model_serving import API_KEY, D, exported, make_settings, register
from tests.support.waiting import free_port


def build_context() -> list[str]:
    """What docker/api.Dockerfile copies into its build stage (its COPY sources)."""
    build_stage = (REPO / "docker" / "api.Dockerfile").read_text().split("\nFROM ")[1]
    copies = re.findall(r"^COPY (?!--)(.+) \S+$", build_stage, re.M)
    return [source for line in copies for source in line.split()]


PIP_TIMEOUT_S = 900


def pip(venv: Path, *args: str, cwd: Path) -> None:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.deploy_engine
def test_api_dependency_set_serves_a_prediction_without_torch(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    assert {"app", "core", "pyproject.toml"} <= set(build_context())
    for name in build_context():
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    requirements = tomllib.loads((source / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [r for r in requirements if r.lower().startswith("torch")]
    (source / "requirements.txt").write_text("\n".join(requirements))

    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, "-r", "requirements.txt", cwd=source)
    pip(venv, "--no-deps", ".", cwd=source)
    print(f"\nfresh API venv installed in {time.monotonic() - started:.1f} s")
    python = venv / "bin" / "python"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    # A model exported by the training side, registered in a store the fresh API reads.
    data_dir = tmp_path / "data"
    onnx_file = exported("het")
    model_id = register(make_settings(data_dir), onnx_file)

    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "HETSERVE_DATA_DIR": str(data_dir), "HETSERVE_API_KEYS": API_KEY}  # fmt: skip
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        # cwd outside the repository: the app comes from the fresh venv, not from the checkout
        api = subprocess.Popen([str(venv / "bin" / "uvicorn"), "app.main:app", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the fresh API did not become ready"
            time.sleep(0.2)
        x = np.linspace(-1.0, 1.0, D, dtype=np.float32)
        answer = httpx.post(f"{url}/v1/models/{model_id}/predict", timeout=30,
                            headers={"Authorization": f"Bearer {API_KEY}"},
                            json={"inputs": [x.tolist()], "mc_samples": 200, "seed": 7})  # fmt: skip
        assert answer.status_code == 200, answer.text
        served = np.array(answer.json()["predictions"][0]["probs"])
        torch_modules = subprocess.run([str(python), "-c", "import app.main, sys; "
                               "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
        assert torch_modules.returncode == 0 and torch_modules.stdout.strip() == "[]", (
            torch_modules.stderr
        )
    finally:
        api.terminate()
        api.wait(timeout=30)

    from app.serving.onnx_model import OnnxModel

    expected = OnnxModel(onnx_file).run(x[None], num_samples=200, seed=7)["probs"][0]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    assert abs(served.sum() - 1.0) < 1e-5
