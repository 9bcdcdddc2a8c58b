"""The servers hetserve is measured against (bench/serve_load.py), one ONNX file each.

    <venv>/bin/python bench/serve_anchors.py {triton,litserve}            (env BENCH_*)
    <venv>/bin/bentoml serve bench.serve_anchors:HetBento --port P          (env BENCH_*)
    uvicorn bench.serve_anchors:fastapi_app --factory --workers N          (env BENCH_*)

Configured by the environment (children spawned by a framework inherit it):
BENCH_MODEL_PATH, BENCH_INTRA_OP_THREADS, BENCH_NUM_SAMPLES, BENCH_WORKERS,
BENCH_MAX_ROWS (rows per batched call), BENCH_DELAY_MS (batching delay), BENCH_PORT,
BENCH_WORKSPACE (Triton's working folder, removed by the caller).

Each runs onnxruntime on the same file with the same session options (``intra_op``
threads, one inter-op thread), passes ``num_samples`` = S and a fresh 63-bit seed from
``os.urandom`` on every call (as hetserve does), computes every graph output and answers
with the probabilities only (hetserve answers every uncertainty field per row: the
anchors do less per request). Batching is each framework's own, at its defaults except
the batch limit (BENCH_MAX_ROWS rows per call):

- ``triton``: Triton's C++ HTTP front end and dynamic batcher through PyTriton, one
  model instance per worker (``max_queue_delay_microseconds`` from BENCH_DELAY_MS,
  Triton's default 0: run what is queued as soon as an instance is free);
- ``litserve``: LitServe's batching loop, BENCH_WORKERS inference workers on the CPU,
  ``batch_timeout`` from BENCH_DELAY_MS (its default 0), at most BENCH_MAX_ROWS
  *requests* per call (LitServe's unit);
- ``bentoml``: BentoML's adaptive batching (``batchable=True``), BENCH_WORKERS workers;
- ``fastapi``: FastAPI + uvicorn, one onnxruntime call per request (no batching).

This file is imported by interpreters that have only numpy, onnxruntime and the one
framework they serve: nothing from the project is imported here.
"""

import os
import sys

import numpy as np

D = 64  # input features of bench/serve_load.py's models


def session(path: str, intra_op_threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


class Predictor:
    """probs of rows x [B, D]: one onnxruntime call, S samples, a fresh seed."""

    def __init__(self, path: str, intra_op_threads: int, num_samples: int):
        self.session = session(path, intra_op_threads)
        self.names = [o.name for o in self.session.get_outputs()]
        self.num_samples = np.asarray(num_samples, dtype=np.int64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        feeds = {
            "input": np.ascontiguousarray(x, dtype=np.float32),
            "num_samples": self.num_samples,
            "seed": np.asarray(fresh_seed(), dtype=np.int64),
        }
        outputs = self.session.run(None, feeds)  # every output, as hetserve computes them
        return outputs[self.names.index("probs")]


def env_int(name: str) -> int:
    return int(os.environ[f"BENCH_{name}"])


def predictor_from_env() -> Predictor:
    return Predictor(
        os.environ["BENCH_MODEL_PATH"],
        int(os.environ["BENCH_INTRA_OP_THREADS"]),
        int(os.environ["BENCH_NUM_SAMPLES"]),
    )


# -- FastAPI, one call per request ------------------------------------------------------


def fastapi_app():
    """``uvicorn --factory``: POST /predict {"inputs": rows} -> {"probs": rows}."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import ORJSONResponse

    predict_rows = predictor_from_env()
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> ORJSONResponse:
        x = np.asarray((await request.json())["inputs"], dtype=np.float32)
        probs = await run_in_threadpool(predict_rows, x)
        return ORJSONResponse({"probs": probs.tolist()})

    return app


# -- Triton through PyTriton ------------------------------------------------------------


def serve_triton() -> None:
    """POST /v2/models/het/infer (KServe v2 JSON: input "input" FP32 [B, D])."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    def instance():
        predict_rows = predictor_from_env()

        @batch
        def infer(input):  # noqa: A002  (the tensor's name in the request)
            return {"probs": predict_rows(input)}

        return infer

    port = env_int("PORT")
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=port + 1,
        metrics_port=port + 2,
        allow_metrics=False,
        allow_grpc=False,
    )
    # A workspace of the caller's: PyTriton leaves its own (a copy of tritonserver)
    # behind when it is stopped by a signal.
    with Triton(config=config, workspace=os.environ.get("BENCH_WORKSPACE")) as triton:
        triton.bind(
            model_name="het",
            infer_func=[instance() for _ in range(env_int("WORKERS"))],
            inputs=[Tensor(name="input", dtype=np.float32, shape=(D,))],
            outputs=[Tensor(name="probs", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=env_int("MAX_ROWS"),
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=int(float(os.environ["BENCH_DELAY_MS"]) * 1000)
                ),
            ),
            strict=False,
        )
        triton.serve()


# -- LitServe ---------------------------------------------------------------------------

try:  # defined at import time: LitServe pickles the API into its worker processes
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:

    class HetLitAPI(ls.LitAPI):
        """POST /predict {"inputs": rows} -> {"probs": rows}."""

        def setup(self, device):
            self.predict_rows = predictor_from_env()
            self.sizes: list[int] = []

        def decode_request(self, request):
            return np.asarray(request["inputs"], dtype=np.float32)

        def batch(self, inputs):  # requests of any number of rows: concatenated
            self.sizes = [len(x) for x in inputs]
            return np.concatenate(inputs)

        def predict(self, x):
            return self.predict_rows(x)

        def unbatch(self, output):
            return np.split(output, np.cumsum(self.sizes)[:-1])

        def encode_response(self, output):
            return {"probs": output.tolist()}


def serve_litserve() -> None:
    # LitServe counts requests, not rows: a batch of 16-row requests may hold 16x more rows.
    api = HetLitAPI(
        max_batch_size=env_int("MAX_ROWS"),
        batch_timeout=float(os.environ["BENCH_DELAY_MS"]) / 1000,
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=env_int("WORKERS"))
    server.run(
        host="127.0.0.1", port=env_int("PORT"), log_level="warning", generate_client_file=False
    )


# -- BentoML ----------------------------------------------------------------------------


def bentoml_service():
    """The service class for ``bentoml serve bench.serve_anchors:HetBento``."""
    import bentoml

    @bentoml.service(workers=env_int("WORKERS"), logging={"access": {"enabled": False}})
    class HetBento:
        def __init__(self) -> None:
            self.predict_rows = predictor_from_env()

        @bentoml.api(batchable=True, max_batch_size=env_int("MAX_ROWS"))
        def predict(self, inputs: np.ndarray) -> np.ndarray:
            return self.predict_rows(inputs)

    return HetBento


def __getattr__(name: str):  # bentoml imports the service by name; built only then
    if name == "HetBento":
        return bentoml_service()
    raise AttributeError(name)


if __name__ == "__main__":
    {"triton": serve_triton, "litserve": serve_litserve}[sys.argv[1]]()
