"""The Open Inference Protocol's (KServe v2) wire format, as hetserve's /v2 routes speak it
(app/routers/kserve.py): the request schema, decoding a request's tensors into the
serving runtime's (x, S, seed), and encoding its outputs as JSON or binary tensor data.

Infer takes the graph's tensors by their ONNX names: ``input`` (FP32 ``[B, ...]``) and
optionally ``num_samples`` and ``seed`` (INT64, one element) as inputs or as request
``parameters``; it answers the graph's outputs (all, or those ``outputs`` names), each
``{name, datatype, shape, data}`` with ``data`` flat in row-major order. The binary tensor
data extension (tritonclient's default) is spoken both ways: a request's JSON header is
followed by its inputs' bytes (``Inference-Header-Content-Length`` says where), each
input's ``binary_data_size`` its share. Limits (rows, S) are the settings' ones, as for
predict, and so are the seed semantics (a seed makes a row's outputs a function of row,
S and seed; no seed, or a negative one: fresh draws). A request the protocol refuses
raises ``ProtocolError`` (400).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from fastapi import HTTPException, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError

from app.serving.onnx_model import OnnxModel
from app.serving.triton import MODEL_VERSION, TensorSpec
from core.onnx_contract import MAX_SEED

# The protocol's datatypes the /v2 routes read and write, and their little-endian layout.
NUMPY_DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
DATATYPE_OF = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
HEADER_LENGTH = "inference-header-content-length"
SCALAR_INPUTS = ("num_samples", "seed")


class ProtocolError(HTTPException):
    """A request the protocol refuses: ``{"error": message}``, 400 unless said."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(status, message)


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


def tensor_metadata(spec: TensorSpec) -> dict:
    """A graph tensor as model metadata declares it."""
    # A rank-0 graph input is sent as one element of shape [1], as Triton declares it.
    return {**spec.metadata(), "shape": list(spec.shape) or [1]}


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


def encode_outputs(
    parsed: InferenceRequest,
    model_ref: str,
    outputs: dict[str, np.ndarray],
    wanted: list[tuple[str, bool]],
    parameters: dict,
) -> tuple[dict[str, Any], list[bytes]]:
    """(the response's JSON payload, the binary data of its binary outputs in their order):
    each output ``{name, datatype, shape}`` with ``data`` flat in row-major order, or with
    ``parameters.binary_data_size`` and its little-endian bytes as a chunk."""
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
    return payload, chunks


def binary_response(header: bytes, chunks: list[bytes]) -> Response:
    """The binary tensor data extension's answer: the JSON header, then the chunks, with
    the header's length in ``Inference-Header-Content-Length``."""
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
