"""Triton model repository export and the Open Inference Protocol (/v2), against a live
uvicorn (torch blocked) serving exported test models: the config is parsed with the
ModelConfig protobuf tritonclient ships, the /v2 routes are driven by tritonclient.http."""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from google.protobuf import text_format
from tritonclient.utils import InferenceServerException

from core.onnx_contract import OUTPUT_NAMES
from tests.support.model_serving import (
    API_KEY,
    IMAGE_SHAPE,
    D,
    exported,
    live_server,
    make_settings,
    register,
    settings_env,
)


def load_model_config_pb2():
    """tritonclient's ``tritonclient.grpc.model_config_pb2`` (Triton's ModelConfig proto),
    loaded from its file: the package's ``__init__`` needs grpcio, which the http client
    does not install; the module itself needs only protobuf."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = load_model_config_pb2()
PREDICT_KEY = "kserve-predict-only"
SETTINGS = dict(max_batch_rows=50, max_mc_samples=2000, max_queue_delay_ms=5)
ORT_TO_TRITON = {
    "tensor(float)": model_config_pb2.TYPE_FP32,
    "tensor(int64)": model_config_pb2.TYPE_INT64,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("kserve")
    settings = make_settings(data, **SETTINGS)
    ids = {
        "het": register(settings, exported("het")),
        "image": register(settings, exported("image")),
    }
    env = settings_env(data, **SETTINGS, api_keys=f"{API_KEY},{PREDICT_KEY}:predict")
    with live_server(env) as url:
        with httpx.Client(base_url=url, headers=auth(), timeout=30) as client:
            alias = client.put("/v1/aliases/kserve-alias", json={"model_id": ids["het"]})
            assert alias.status_code == 200, alias.text
            yield {"url": url, "ids": ids, "client": client}


def graph(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def triton_dims(shape) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def repository(client, model: str, **params) -> tuple[model_config_pb2.ModelConfig, bytes, str]:
    r = client.get(f"/v1/models/{model}/triton", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = sorted(archive.namelist())
        name = names[0].split("/")[0]
        assert names == [f"{name}/1/model.onnx", f"{name}/config.pbtxt"]
        text = archive.read(f"{name}/config.pbtxt").decode()
        onnx_bytes = archive.read(f"{name}/1/model.onnx")
    return text_format.Parse(text, model_config_pb2.ModelConfig()), onnx_bytes, text


# -- the Triton model repository ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["het", "image"])
def test_triton_config_names_the_graphs_tensors_without_batching(server, which):
    client, model_id = server["client"], server["ids"][which]
    config, onnx_bytes, _ = repository(client, model_id)
    download = client.get(f"/v1/models/{model_id}/onnx")
    assert onnx_bytes == download.content  # the same file, the one the hash check passed
    session = graph(onnx_bytes)

    assert config.name == model_id and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    required = {a.name: a for a in session.get_inputs()}
    optional = {a.name: a for a in session.get_overridable_initializers()}
    assert [i.name for i in config.input] == [*required, *optional]
    assert list(optional) == ["num_samples", "seed"]
    for tensor in config.input:
        arg = required.get(tensor.name) or optional[tensor.name]
        assert tensor.data_type == ORT_TO_TRITON[arg.type], tensor.name
        assert tensor.optional == (tensor.name in optional)
        # the onnxruntime backend's rule: a scalar is declared with dims all 1
        assert list(tensor.dims) == (triton_dims(arg.shape) or [1]), tensor.name
    shape = IMAGE_SHAPE if which == "image" else [D]
    assert list(config.input[0].dims) == [-1, *shape]
    assert [o.name for o in config.output] == list(OUTPUT_NAMES)
    for tensor, arg in zip(config.output, session.get_outputs(), strict=True):
        assert tensor.name == arg.name
        assert tensor.data_type == ORT_TO_TRITON[arg.type], tensor.name
        assert list(tensor.dims) == triton_dims(arg.shape), tensor.name


def test_triton_config_with_dynamic_batching(server):
    client, model_id = server["client"], server["ids"]["het"]
    config, onnx_bytes, _ = repository(client, "kserve-alias", max_batch_size=32)
    session = graph(onnx_bytes)
    assert config.name == model_id  # an alias exports the model it points at
    assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
    # Triton refuses optional inputs when batching: only the batched input is declared.
    assert [i.name for i in config.input] == ["input"]
    assert list(config.input[0].dims) == [D] and not config.input[0].optional
    for tensor, arg in zip(config.output, session.get_outputs(), strict=True):
        assert arg.shape[0] == "batch" and tensor.name == arg.name
        assert list(tensor.dims) == (triton_dims(arg.shape[1:]) or [1]), tensor.name
        # a per-row scalar ([batch] in the graph) is [batch, 1] to Triton, reshaped
        assert tensor.HasField("reshape") == (len(arg.shape) == 1), tensor.name
        assert list(tensor.reshape.shape) == []
    assert client.get(f"/v1/models/{model_id}/triton?max_batch_size=-1").status_code == 422
    assert client.get("/v1/models/nope/triton").status_code == 404
    assert httpx.get(f"{server['url']}/v1/models/{model_id}/triton").status_code == 401


# -- the Open Inference Protocol with tritonclient -----------------------------------------------


@pytest.fixture(scope="module")
def triton(server):
    client = triton_http.InferenceServerClient(server["url"].removeprefix("http://"))
    yield client
    client.close()


def auth(key: str = API_KEY) -> dict[str, str]:
    """A fresh headers dict per call: tritonclient writes its own headers into the one given."""
    return {"Authorization": f"Bearer {key}"}


def rows(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def int64_input(name: str, value: int, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput(name, [1], "INT64")
    tensor.set_data_from_numpy(np.array([value], dtype=np.int64), binary_data=binary)
    return tensor


def test_health_is_open_and_models_need_the_key(server, triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.get_server_metadata()["name"] == "hetserve"
    model_id = server["ids"]["het"]
    with pytest.raises(InferenceServerException) as missing:
        triton.get_model_metadata(model_id)
    assert missing.value.status() == "401" and "API key" in missing.value.message()
    assert triton.is_model_ready(model_id, headers=auth())
    assert not triton.is_model_ready("no-such-model", headers=auth())


def test_model_metadata_lists_the_graphs_tensors(server, triton):
    meta = triton.get_model_metadata("kserve-alias", headers=auth())
    assert meta["name"] == "kserve-alias" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, D]},
        {"name": "num_samples", "datatype": "INT64", "shape": [1]},
        {"name": "seed", "datatype": "INT64", "shape": [1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUT_NAMES)
    by_name = {o["name"]: o for o in meta["outputs"]}
    assert by_name["probs"] == {"name": "probs", "datatype": "FP32", "shape": [-1, 5]}
    assert by_name["entropy"]["shape"] == [-1]
    assert by_name["top_classes"]["datatype"] == "INT64"
    assert by_name["top_correlation"]["shape"] == [-1, 5, 5]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_v1_predict_with_the_same_seed(server, triton, binary):
    model_id, client = server["ids"]["het"], server["client"]
    x, s, seed = rows(4, 1), 400, 2026
    expected = client.post(
        f"/v1/models/{model_id}/predict", json={"inputs": x.tolist(), "mc_samples": s, "seed": seed}
    ).json()["predictions"]

    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary) for name in OUTPUT_NAMES]
    result = triton.infer(
        model_id,
        [tensor, int64_input("num_samples", s, binary), int64_input("seed", seed, binary)],
        outputs=outputs,
        headers=auth(),
    )
    probs = result.as_numpy("probs")
    assert probs.dtype == np.float32 and probs.shape == (4, 5)
    np.testing.assert_allclose(probs, [p["probs"] for p in expected], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        result.as_numpy("entropy"), [p["entropy"] for p in expected], rtol=1e-6, atol=1e-7
    )
    for name in OUTPUT_NAMES:
        assert result.as_numpy(name).shape[0] == 4, name
    assert result.as_numpy("top_classes").dtype == np.int64
    assert result.get_response()["parameters"] == {"num_samples": s, "seed": seed}


def test_infer_takes_parameters_selects_outputs_and_batches_rows(server, triton):
    model_id = server["ids"]["het"]
    x = rows(3, 2)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    first = triton.infer(
        "kserve-alias",
        [tensor],
        outputs=[triton_http.InferRequestedOutput("noise_free_probs")],
        parameters={"num_samples": 50, "seed": 9},
        headers=auth(),
    )
    assert [o["name"] for o in first.get_response()["outputs"]] == ["noise_free_probs"]
    again = triton.infer(
        model_id, [tensor, int64_input("seed", 9)], parameters={"num_samples": 50}, headers=auth()
    )
    np.testing.assert_array_equal(
        first.as_numpy("noise_free_probs"), again.as_numpy("noise_free_probs")
    )
    assert again.as_numpy("probs").shape == (3, 5)  # no selection: every output

    # a predict-only key may infer
    assert triton.infer(model_id, [tensor], headers=auth(PREDICT_KEY)).as_numpy("probs").shape == (
        3,
        5,
    )


def test_image_model_takes_its_input_shape(server, triton):
    x = np.random.default_rng(3).uniform(size=(2, *IMAGE_SHAPE)).astype(np.float32)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer(server["ids"]["image"], [tensor], headers=auth())
    assert result.as_numpy("probs").shape == (2, 4)


def test_mc_stderr_from_one_draw_is_binary_nan_or_a_clear_400(server, triton):
    """num_samples = 1: mc_stderr is NaN (undefined). As binary it comes back NaN; as
    JSON, which has no NaN, the request is a 400 naming it; the other outputs are fine."""
    model_id, url = server["ids"]["het"], server["url"]
    x = rows(2, 4)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    binary = triton.infer(
        model_id,
        [tensor],
        outputs=[triton_http.InferRequestedOutput("mc_stderr", binary_data=True)],
        parameters={"num_samples": 1},
        headers=auth(),
    )
    assert np.isnan(binary.as_numpy("mc_stderr")).all()
    infer = f"{url}/v2/models/{model_id}/infer"
    plain = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    body = {"inputs": [plain], "parameters": {"num_samples": 1}}
    refused = httpx.post(infer, json=body, headers=auth())
    assert refused.status_code == 400 and "mc_stderr is undefined" in refused.json()["error"]
    body["outputs"] = [{"name": "probs"}]
    assert httpx.post(infer, json=body, headers=auth()).status_code == 200


def error_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_bad_requests_are_4xx_with_an_error(server, triton):
    model_id, url = server["ids"]["het"], server["url"]
    x = rows(2)
    bad = triton_http.InferInput("input", [2, D - 1], "FP32")
    bad.set_data_from_numpy(x[:, : D - 1])
    status, message = error_of(lambda: triton.infer(model_id, [bad], headers=auth()))
    assert status == "400" and "shape" in message

    good = triton_http.InferInput("input", list(x.shape), "FP32")
    good.set_data_from_numpy(x)
    assert error_of(lambda: triton.infer("no-such-model", [good], headers=auth()))[0] == "404"
    status, message = error_of(
        lambda: triton.infer(
            model_id, [good], outputs=[triton_http.InferRequestedOutput("nope")], headers=auth()
        )
    )
    assert status == "400" and "nope" in message
    status, message = error_of(
        lambda: triton.infer(model_id, [good], parameters={"num_samples": 10**6}, headers=auth())
    )
    assert status == "400" and "num_samples" in message
    status, _ = error_of(
        lambda: triton.infer(model_id, [good, int64_input("num_samples", 0)], headers=auth())
    )
    assert status == "400"
    status, message = error_of(lambda: triton.infer(model_id, [good], headers=auth("wrong")))
    assert status == "401" and "invalid API key" in message

    # plain JSON: too many rows, data that does not fill the shape, not JSON at all
    infer = f"{url}/v2/models/{model_id}/infer"
    tensor = {"name": "input", "shape": [51, D], "datatype": "FP32", "data": [0.0] * (51 * D)}
    too_many = httpx.post(infer, json={"inputs": [tensor]}, headers=auth())
    assert too_many.status_code == 400 and "at most 50" in too_many.json()["error"]
    short = httpx.post(
        infer,
        json={"inputs": [{"name": "input", "shape": [2, D], "datatype": "FP32", "data": [1.0]}]},
        headers=auth(),
    )
    assert short.status_code == 400 and "values for shape" in short.json()["error"]
    garbage = httpx.post(infer, content=b"{not json", headers=auth())
    assert garbage.status_code == 400 and "error" in garbage.json()
