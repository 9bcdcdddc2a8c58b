"""Serving beyond hetserve's own predict route: a model as a Triton model repository, and
the Open Inference Protocol (KServe v2) on hetserve itself.

- ``GET /v1/models/{model_id}/triton``: a zip holding ``<model id>/config.pbtxt`` and
  ``<model id>/1/model.onnx`` (the file ``/onnx`` downloads, hash-checked the same way);
  the config is app/serving/triton.py's (``max_batch_size=N`` for Triton's batching).
- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: open, like ``/healthz``.
- ``GET /v2/models/{model_id}``, ``.../ready``, ``POST .../infer``: the bearer key, as
  ``/v1`` (app/gate.py; a predict-only key may infer). ``{model_id}`` is an id or an alias.

Infer takes the graph's tensors by their ONNX names: ``input`` (FP32 ``[B, ...]``) and
optionally ``num_samples`` and ``seed`` (INT64, one element) as inputs or as request
``parameters``; it answers the graph's outputs (all, or those ``outputs`` names), each
``{name, datatype, shape, data}`` with ``data`` flat in row-major order. The binary tensor
data extension (tritonclient's default) is spoken both ways. Rows run through the same
serving runtime and dynamic batcher as predict, with the same limits (rows, S) and the
same seed semantics (a seed makes a row's outputs a function of row, S and seed; no seed,
or a negative one: fresh draws). Errors are ``{"error": "..."}`` with a 4xx: 400 for a
bad request, 404 for an unknown model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.deps import ArtifactsDep, RuntimeDep, SessionDep, SettingsDep, require_api_key
from app.routers import AUTH_ERRORS, MODEL_NOT_FOUND
from app.routers.models import find_model
from app.routers.predict import (
    UNDEFINED_AT_ONE_SAMPLE,
    ServingRoute,
    first_non_finite_row,
    json_response,
    self_read_openapi,
    served_model,
)
from app.serving.metrics import JSON_OFF_LOOP_BYTES
from app.serving.onnx_model import OnnxModel
from app.serving.sessions import ModelIntegrityError
from app.serving.triton import (
    MODEL_VERSION,
    PLATFORM,
    TensorSpec,
    config_pbtxt,
    repository_zip,
    signature,
)
from models.onnx_contract import MAX_SEED

ModelRef = Annotated[
    str, PathParam(min_length=1, max_length=128, description="a model id or an alias name")
]
KEY = [Depends(require_api_key)]

# The protocol's datatypes this route reads and writes, and their little-endian layout.
NUMPY_DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
DATATYPE_OF = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
HEADER_LENGTH = "inference-header-content-length"
SCALAR_INPUTS = ("num_samples", "seed")


class ProtocolError(HTTPException):
    """A request the protocol refuses: ``{"error": message}``, 400 unless said."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status, message)


def protocol_errors(handler: Callable) -> Callable:
    """Every error of a /v2 route as the protocol's ``{"error": "..."}``."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except StarletteHTTPException as exc:
            message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)
        except RequestValidationError as exc:
            where = "; ".join(
                f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()
            )
            return JSONResponse({"error": where[:1000]}, 400)

    return route


class ProtocolRoute(ServingRoute):
    """Counted and timed like predict; errors as the protocol's ``{"error": ...}``."""

    def get_route_handler(self) -> Callable:
        return protocol_errors(super().get_route_handler())


class RequestTensor(BaseModel):
    name: str
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list | None = Field(None, description="row-major, flat or nested")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="`num_samples`, `seed`; `binary_data_output`"
    )
    inputs: list[RequestTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 4],
                            "datatype": "FP32",
                            "data": [0.1, 0.2, 0.3, 0.4],
                        }
                    ],
                    "parameters": {"num_samples": 1000, "seed": 7},
                    "outputs": [{"name": "probs"}],
                }
            ]
        }
    }


INFER_OPENAPI = self_read_openapi(InferenceRequest)
PROTOCOL_ERRORS = {
    **AUTH_ERRORS,
    400: {"description": 'a bad request: `{"error": "..."}`'},
    404: {"description": 'no model with that id or alias: `{"error": "..."}`'},
}

router = APIRouter()
v1 = APIRouter(tags=["kserve"], route_class=ServingRoute, dependencies=KEY)
v2 = APIRouter(prefix="/v2", tags=["kserve"], route_class=ProtocolRoute)
v2_models = APIRouter(prefix="/v2/models", tags=["kserve"], route_class=ProtocolRoute)


# -- the Triton model repository ------------------------------------------------------------


@v1.get(
    "/v1/models/{model_id}/triton",
    summary="The model as a Triton model repository (zip: config.pbtxt + 1/model.onnx)",
    responses={
        **AUTH_ERRORS,
        **MODEL_NOT_FOUND,
        200: {"content": {"application/zip": {}}},
        409: {"description": "the file does not match its recorded sha256"},
    },
)
def get_triton_repository(
    request: Request,
    model_id: ModelRef,
    session: SessionDep,
    artifacts: ArtifactsDep,
    runtime: RuntimeDep,
    max_batch_size: Annotated[
        int,
        Query(
            ge=0,
            le=2**31 - 1,
            description="0: no Triton batching, `num_samples` and `seed` optional inputs;"
            " N > 0: `dynamic_batching` up to N rows, the file's default S and fresh draws",
        ),
    ] = 0,
) -> Response:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    path = artifacts.resolve(model.onnx_path)
    if not path.is_file():
        raise HTTPException(
            404, f"the ONNX file of model {model.id} is missing from the artifact store"
        )
    # Loading verifies the file's hash first (a 409 when it does not match).
    loaded = runtime.sessions.get((model.id, model.onnx_sha256), path)
    onnx_bytes = path.read_bytes()
    if hashlib.sha256(onnx_bytes).hexdigest() != model.onnx_sha256:  # changed since loaded
        runtime.sessions.verify(model.id, model.onnx_sha256, path)
        raise ModelIntegrityError(model.id)
    inputs, outputs = signature(loaded.session)
    config = config_pbtxt(model.id, inputs, outputs, max_batch_size)
    return Response(
        repository_zip(model.id, config, onnx_bytes),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{model.id}-triton.zip"',
            "X-Onnx-Sha256": model.onnx_sha256,
        },
    )


# -- server health and metadata (open) -------------------------------------------------------


@v2.get("", summary="Server metadata (Open Inference Protocol)")
async def server_metadata(request: Request) -> dict:
    return {
        "name": "hetserve",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@v2.get("/health/live", summary="The server is live (Open Inference Protocol)")
async def server_live() -> dict:
    return {"live": True}


@v2.get("/health/ready", summary="The server is ready (Open Inference Protocol)")
async def server_ready(request: Request) -> JSONResponse:
    ready = getattr(request.app.state, "runtime", None) is not None
    return JSONResponse({"ready": ready}, 200 if ready else 503)


# -- models (the bearer key) -----------------------------------------------------------------


def tensor_metadata(spec: TensorSpec) -> dict:
    # A rank-0 graph input is sent as one element of shape [1], as Triton declares it.
    return {**spec.metadata(), "shape": list(spec.shape) or [1]}


@v2_models.get(
    "/{model_id}",
    summary="Model metadata (Open Inference Protocol)",
    responses=PROTOCOL_ERRORS,
    dependencies=KEY,
)
async def model_metadata(request: Request, model_id: ModelRef, runtime: RuntimeDep) -> dict:
    _, model = await served_model(request, runtime, model_id)
    inputs, outputs = signature(model.session)
    return {
        "name": model_id,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [tensor_metadata(s) for s in inputs],
        "outputs": [tensor_metadata(s) for s in outputs],
    }


@v2_models.get(
    "/{model_id}/ready",
    summary="The model is ready (Open Inference Protocol)",
    responses=PROTOCOL_ERRORS,
    dependencies=KEY,
)
async def model_ready(request: Request, model_id: ModelRef, runtime: RuntimeDep) -> dict:
    await served_model(request, runtime, model_id)  # loads it: ready once this returns
    return {"name": model_id, "ready": True}


@v2_models.post(
    "/{model_id}/infer",
    summary="Inference (Open Inference Protocol, JSON or binary tensor data)",
    responses=PROTOCOL_ERRORS,
    dependencies=KEY,
    openapi_extra=INFER_OPENAPI,
)
async def infer(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    # Path parameter and body read here, as predict does (declared in INFER_OPENAPI).
    model_ref = request.path_params["model_id"]
    body = await request.body()
    header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    try:
        if len(header) > JSON_OFF_LOOP_BYTES:
            parsed = await run_in_threadpool(InferenceRequest.model_validate_json, header)
        else:
            parsed = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise ProtocolError(f"invalid inference request: {brief(exc)}") from None
    resolved_id, model = await served_model(request, runtime, model_ref)
    if len(body) > JSON_OFF_LOOP_BYTES:
        x, num_samples, seed = await run_in_threadpool(
            decode_inputs, parsed, binary, model, settings
        )
    else:
        x, num_samples, seed = decode_inputs(parsed, binary, model, settings)
    wanted = requested_outputs(parsed, model)
    outputs = await runtime.predict(model, resolved_id, x, num_samples, seed)
    parameters = {"num_samples": num_samples, **({"seed": seed} if seed is not None else {})}
    return encode_response(parsed, model_ref, outputs, wanted, parameters)


# -- decoding and encoding -------------------------------------------------------------------


def brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)[:5]
    )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a request (the binary data extension)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} does not fit the body")
    return body[: int(header_length)], body[int(header_length) :]


def tensor_values(tensor: RequestTensor, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """The tensor's values, shaped, and the offset past its binary data (if any)."""
    dtype = NUMPY_DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise ProtocolError(
            f"input {tensor.name!r}: datatype {tensor.datatype!r} not supported"
            f" (use one of {', '.join(NUMPY_DATATYPES)})"
        )
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        itemsize = np.dtype(dtype).itemsize
        if type(size) is not int or size != count * itemsize or offset + size > len(binary):
            raise ProtocolError(
                f"input {tensor.name!r}: binary_data_size {size!r} does not match shape"
                f" {tensor.shape} of {tensor.datatype} or the data sent"
            )
        values = np.frombuffer(binary[offset : offset + size], dtype=dtype)
        return values.reshape(tensor.shape), offset + size
    if tensor.data is None:
        raise ProtocolError(f"input {tensor.name!r}: give `data` or binary data")
    try:
        values = np.asarray(tensor.data, dtype=np.float64 if dtype[1] == "f" else np.int64)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(
            f"input {tensor.name!r}: `data` must be numbers, flat or nested to the shape"
        ) from None
    if values.size != count:
        raise ProtocolError(f"input {tensor.name!r}: {values.size} values for shape {tensor.shape}")
    return values.reshape(tensor.shape), offset


def scalar(name: str, value: Any) -> int:
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iu":
            raise ProtocolError(f"{name} must be one INT64 element, got shape {list(value.shape)}")
        value = int(value.reshape(()))
    if type(value) is not int:
        raise ProtocolError(f"{name} must be an integer, got {value!r}"[:200])
    return value


def decode_inputs(
    parsed: InferenceRequest, binary: bytes, model: OnnxModel, settings
) -> tuple[np.ndarray, int, int | None]:
    """(x [B, ...] float32, S, seed or None) from the request's inputs and parameters."""
    given: dict[str, np.ndarray] = {}
    view, offset = memoryview(binary), 0
    for tensor in parsed.inputs:
        if tensor.name != "input" and tensor.name not in SCALAR_INPUTS:
            raise ProtocolError(
                f"unknown input {tensor.name!r}: the model takes 'input', 'num_samples', 'seed'"
            )
        if tensor.name in given:
            raise ProtocolError(f"input {tensor.name!r} given twice")
        if tensor.name == "input" and tensor.datatype != "FP32":
            raise ProtocolError(f"input 'input' must be FP32, got {tensor.datatype!r}")
        if tensor.name in SCALAR_INPUTS and tensor.datatype not in ("INT64", "INT32"):
            raise ProtocolError(f"input {tensor.name!r} must be INT64, got {tensor.datatype!r}")
        if tensor.name == "input" and tensor.shape and tensor.shape[0] > settings.max_batch_rows:
            raise ProtocolError(
                f"input 'input': {tensor.shape[0]} rows; at most {settings.max_batch_rows}"
                " per request"
            )
        given[tensor.name], offset = tensor_values(tensor, view, offset)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    if "input" not in given:
        raise ProtocolError("input 'input' is required")
    try:
        x = model.check_input(given["input"].astype(np.float32))
    except ValueError as exc:
        raise ProtocolError(f"input 'input': {exc}") from None

    parameters = parsed.parameters or {}
    chosen: dict[str, int | None] = {}
    for name in SCALAR_INPUTS:
        if name in given and name in parameters:
            raise ProtocolError(f"{name} given both as an input and as a parameter")
        value = given.get(name, parameters.get(name))
        chosen[name] = None if value is None else scalar(name, value)
    num_samples = chosen["num_samples"]
    if num_samples is None:
        num_samples = min(model.eval_mc_samples, settings.max_mc_samples)
    elif not 1 <= num_samples <= settings.max_mc_samples:
        raise ProtocolError(f"num_samples must be in [1, {settings.max_mc_samples}]")
    seed = chosen["seed"]
    if seed is not None and seed > MAX_SEED:
        raise ProtocolError("seed must be below 2^63 (a negative seed: fresh draws)")
    return x, num_samples, None if seed is None or seed < 0 else seed


def requested_outputs(parsed: InferenceRequest, model: OnnxModel) -> list[tuple[str, bool]]:
    """(output name, as binary data) in the order asked, all of them when none asked."""
    binary_default = bool((parsed.parameters or {}).get("binary_data_output", False))
    if not parsed.outputs:
        return [(name, binary_default) for name in model.output_names]
    wanted = []
    for output in parsed.outputs:
        if output.name not in model.output_names:
            raise ProtocolError(
                f"unknown output {output.name!r}: the model has {', '.join(model.output_names)}"
            )
        binary = (output.parameters or {}).get("binary_data", binary_default)
        wanted.append((output.name, bool(binary)))
    return wanted


def encode_response(
    parsed: InferenceRequest,
    model_ref: str,
    outputs: dict[str, np.ndarray],
    wanted: list[tuple[str, bool]],
    parameters: dict,
) -> Response:
    in_json = [name for name, binary in wanted if not binary]
    if UNDEFINED_AT_ONE_SAMPLE in in_json and parameters["num_samples"] == 1:
        raise ProtocolError(
            f"{UNDEFINED_AT_ONE_SAMPLE} is undefined from one draw (NaN, which JSON cannot "
            "carry): ask for num_samples >= 2, for the other outputs only, or for it as binary"
        )
    overflow = first_non_finite_row(outputs, in_json) if in_json else None
    if overflow is not None:
        raise ProtocolError(
            f"row {overflow}: the model's outputs overflow for this row (values far outside"
            " the training data); ask for binary outputs to receive them anyway"
        )
    tensors, chunks = [], []
    for name, binary in wanted:
        value = outputs[name]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPE_OF[value.dtype],
            "shape": list(value.shape),
        }
        if binary:
            raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = value.ravel().tolist()
        tensors.append(tensor)
    payload = {
        "model_name": model_ref,
        "model_version": MODEL_VERSION,
        **({"id": parsed.id} if parsed.id is not None else {}),
        "parameters": parameters,
        "outputs": tensors,
    }
    if not chunks:
        return json_response(payload)
    header = bytes(json_response(payload).body)
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


router.include_router(v1)
router.include_router(v2)
router.include_router(v2_models)
