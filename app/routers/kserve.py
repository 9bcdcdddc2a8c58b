"""Serving beyond hetserve's own predict route: a model as a Triton model repository, and
the Open Inference Protocol (KServe v2) on hetserve itself.

- ``GET /v1/models/{model_id}/triton``: a zip holding ``<model id>/config.pbtxt`` and
  ``<model id>/1/model.onnx`` (the file ``/onnx`` downloads, hash-checked the same way);
  the config and the zip are app/serving/triton.py's (``max_batch_size=N`` for Triton's
  batching).
- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: open, like ``/healthz``.
- ``GET /v2/models/{model_id}``, ``.../ready``, ``POST .../infer``: the bearer key, as
  ``/v1`` (app/gate.py; a predict-only key may infer). ``{model_id}`` is an id or an alias.

Infer's tensors and their JSON and binary encodings are app/serving/v2_codec.py's. Rows
run through the same serving runtime and dynamic batcher as predict, with the same limits
and seed semantics. Errors are ``{"error": "..."}`` with a 4xx: 400 for a bad request,
404 for an unknown model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.deps import ArtifactsDep, RuntimeDep, SessionDep, SettingsDep, require_api_key
from app.routers import AUTH_ERRORS, MODEL_FILE_CHANGED, MODEL_NOT_FOUND
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
from app.serving.sessions import ModelIntegrityError
from app.serving.triton import MODEL_VERSION, PLATFORM, config_pbtxt, repository_zip, signature
from app.serving.v2_codec import (
    HEADER_LENGTH,
    InferenceRequest,
    ProtocolError,
    binary_response,
    brief,
    decode_inputs,
    encode_outputs,
    requested_outputs,
    split_body,
    tensor_metadata,
)

ModelRef = Annotated[
    str, PathParam(min_length=1, max_length=128, description="a model id or an alias name")
]
KEY = [Depends(require_api_key)]


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
        **MODEL_FILE_CHANGED,
        200: {"content": {"application/zip": {}}},
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
    in_json = [name for name, as_binary in wanted if not as_binary]
    if UNDEFINED_AT_ONE_SAMPLE in in_json and num_samples == 1:  # refused before inference
        raise ProtocolError(
            f"{UNDEFINED_AT_ONE_SAMPLE} is undefined from one draw (NaN, which JSON cannot "
            "carry): ask for num_samples >= 2, for the other outputs only, or for it as binary"
        )
    outputs = await runtime.predict(model, resolved_id, x, num_samples, seed)
    parameters = {"num_samples": num_samples, **({"seed": seed} if seed is not None else {})}
    overflow = first_non_finite_row(outputs, in_json) if in_json else None
    if overflow is not None:
        raise ProtocolError(
            f"row {overflow}: the model's outputs overflow for this row (values far outside"
            " the training data); ask for binary outputs to receive them anyway"
        )
    payload, chunks = encode_outputs(parsed, model_ref, outputs, wanted, parameters)
    if not chunks:
        return json_response(payload)
    return binary_response(bytes(json_response(payload).body), chunks)


router.include_router(v1)
router.include_router(v2)
router.include_router(v2_models)
