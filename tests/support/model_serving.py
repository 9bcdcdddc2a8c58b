"""Shared by the serving tests: tiny exported models registered in a real store, and
live uvicorn processes that cannot import torch.

Models are exported once per test session (``exported``, cached on disk) with
models.export straight from randomly initialised classifiers: the serving path only
needs a valid hetserve ONNX file, not a trained one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.processes import stop_process
from tests.support.waiting import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-serving-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

D = 6  # vector models: features
IMAGE_SHAPE = [1, 8, 8]  # image model: grayscale 8 x 8
EVAL_S = 300

# Runs uvicorn in a process where any import of torch fails: the serving path must not need it.
NO_TORCH_UVICORN = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed on the serving path")
        return None
sys.meta_path.insert(0, _NoTorch())
import uvicorn
uvicorn.main()
"""


@functools.cache
def export_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hetserve-serving-models-"))


@functools.cache
def exported(name: str) -> Path:
    """Export one tiny model (once per session): "het" (K=5, R=3, MLP, D=6), "het_k3"
    (K=3) or "image" (small CNN on 1 x 8 x 8, K=4)."""
    import torch

    from core.spec import BackboneSpec, HeadSpec, RunSpec
    from models.classifier import build_classifier
    from models.export import export_onnx

    torch.manual_seed(0)
    head = HeadSpec(kind="het", num_factors=3, temperature=1.5, eval_mc_samples=EVAL_S)
    rng = np.random.default_rng(0)
    if name == "image":
        spec, shape, k = RunSpec(head=head, backbone=BackboneSpec(kind="cnn")), IMAGE_SHAPE, 4
        mean, std = np.full(shape, 0.5, np.float32), np.full(shape, 0.25, np.float32)
    else:
        k = 3 if name == "het_k3" else 5
        spec, shape = RunSpec(head=head, backbone=BackboneSpec(hidden=[16])), [D]
        mean, std = np.zeros(D, np.float32), np.ones(D, np.float32)
    model = build_classifier(spec, shape, k, mean, std).eval()
    with torch.no_grad():  # spread the logits so probabilities are not all ~1/K
        model.head.loc.weight.mul_(4.0)
    path = export_dir() / f"{name}.onnx"
    parity = rng.uniform(0, 1, size=(8, *shape)).astype(np.float32)
    export_onnx(model, path, class_names=[f"c{i}" for i in range(k)], parity_inputs=parity)
    return path


def settings_env(data_dir: Path, **overrides) -> dict[str, str]:
    env = {
        "HETSERVE_DATA_DIR": str(data_dir),
        "HETSERVE_API_KEYS": API_KEY,
        "HETSERVE_LOG_LEVEL": "WARNING",
    }
    env.update({f"HETSERVE_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def make_settings(data_dir: Path, **overrides):
    from app.settings import Settings

    return Settings(data_dir=data_dir, api_keys=API_KEY, **overrides)


def register(settings, onnx_file: Path, *, baseline_metrics: dict | None = None) -> str:
    """Put ``onnx_file`` in the artifact store and register it as a finished job's model."""
    from app import db
    from app.artifacts import ArtifactStore
    from app.serving.onnx_model import OnnxModel
    from app.store import DatasetStore, JobStore
    from tests.support.finished_jobs import model_row

    db.migrate(settings)
    meta = OnnxModel(onnx_file).metadata
    relative, sha256 = ArtifactStore(settings.data_dir).put_file(onnx_file, ".onnx")
    with db.session_scope(settings) as session:
        dataset = DatasetStore(session).add(
            name="synthetic",
            format="npz",
            task=meta["task"],
            num_train=10,
            num_val=0,
            num_test=0,
            input_shape=meta["input_shape"],
            num_classes=len(meta["class_names"]),
            class_names=meta["class_names"],
            sha256="0" * 64,
            size_bytes=1,
            artifact_path="none",
        )
        jobs = JobStore(session)
        job = jobs.create(dataset.id, {"head": {"kind": "het"}})
        model = model_row(session, job.id, meta, relative, sha256, baseline_metrics)
        jobs.finish(job.id, "succeeded", metrics={}, model_id=model.id)
        return model.id


@contextlib.contextmanager
def live_server(
    env: dict[str, str], workers: int = 1, timeout: float = 60.0, app: list[str] | None = None
):
    """``uvicorn app.main:app`` (torch blocked) on a free loopback port; yields its URL.
    ``app`` replaces the app argument (e.g. ``["pkg.mod:factory", "--factory"]``)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        NO_TORCH_UVICORN,
        *(app or ["app.main:app"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    # A file, not a pipe: a full pipe would stall the server.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{log.read()}")
            try:  # uvicorn answers only once the app's startup is complete
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not become healthy in time")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(proc, 15)
        log.close()


def without_noise_free_output(path: Path, out: Path) -> Path:
    """The same model as a file exported before the graph had a noise_free_probs output."""
    import onnx  # the training side's package, imported only where a file is rewritten

    proto = onnx.load(path)
    kept = [o for o in proto.graph.output if o.name != "noise_free_probs"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, out)
    return out
