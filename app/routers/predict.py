"""``POST /v1/models/{model_id}/predict``: predictions with uncertainty, the hot path.

Per row, the fields the ONNX graph computes (probabilities, entropies, noise, correlated
class pairs, the noise-free predictive), run by onnxruntime through the app's serving runtime (app/serving: lookup
cache, session cache, dynamic batching). ``model_id`` is a model id or an alias. ``predictive: "noise_free"`` calls the graph with
``num_samples = 0`` (no sampling: its own batching lane) and answers from
``noise_free_probs``; 409 for a file exported before that output existed.

Also here: ``ServingRoute``, the route class of every model, alias and metrics route:
counted and timed for /metrics. Request bodies are capped by app/gate.py, predict's at
``settings.max_request_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from math import prod
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from app.deps import require_api_key
from app.routers import AUTH_ERRORS, MODEL_NOT_FOUND, operation_id
from app.serving.batching import Outputs
from app.serving.inputs import InputError, parse_images, parse_inputs
from app.serving.metrics import JSON_OFF_LOOP_BYTES, InstrumentedRoute, instrument
from app.serving.onnx_model import ModelFileError, OnnxModel
from app.serving.runtime import ServingRuntime
from app.serving.schemas import PredictRequest, PredictResponse
from app.settings import Settings
from app.uploads import DecodeBusy, decode_slot

try:
    import orjson
except ImportError:  # an optional speedup; the standard library encodes the same JSON
    orjson = None  # type: ignore[assignment]  # callers test `orjson is None`


class ServingRoute(InstrumentedRoute):
    """Counted and timed for /metrics. Body limits: app/gate.py (``max_request_bytes``
    for predict)."""


class LeanRoute(ServingRoute):
    """A serving route whose endpoint takes the ``Request`` alone and reads its path
    parameter and body itself (declared in ``self_read_openapi``): FastAPI's parameter
    and dependency machinery is skipped. The router's dependencies (the /v1 API key)
    stay declared for the OpenAPI document; the key is checked here as
    ``app.deps.require_api_key`` checks it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            await require_api_key(request, None)
            response: Response = await endpoint(request)
            return response

        return instrument(handler, self.path, self.methods)


# Mounted by app/main.py as the app's first route, the API key required (the gate
# checked it; LeanRoute checks it is there).
router = APIRouter(
    tags=["predict"],
    route_class=LeanRoute,
    dependencies=[Depends(require_api_key)],
    generate_unique_id_function=operation_id,
)


def self_read_openapi(body: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI declaration of a serving route that reads its ``model_id`` path
    parameter and its JSON body itself (predict, the Open Inference Protocol's infer):
    FastAPI cannot see them, so they are declared here."""
    return {
        "parameters": [
            {
                "name": "model_id",
                "in": "path",
                "required": True,
                "description": "a model id or an alias name",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body.model_json_schema()}},
        },
    }


# Values of `inputs` above which they are checked and converted off the event loop
# (about 10 ms of work at this size; the usual small request stays on the hot path).
INPUTS_OFF_LOOP = 65_536

# The API key is the /v1 router's dependency.
PREDICT_OPENAPI = self_read_openapi(PredictRequest)


def parse_large_body(body: bytes) -> PredictRequest:
    """A large body (in a worker thread): orjson, then pydantic on the parsed objects.
    A thread does not free the event loop while a parser runs (it holds the GIL for the
    whole document): the faster parser shortens that hold. A body orjson refuses (NaN,
    Infinity, integers beyond 64 bits: pydantic accepts them, and the inputs check
    names their index) takes pydantic's own parser."""
    if orjson is not None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return PredictRequest.model_validate(parsed)
    return PredictRequest.model_validate_json(body)


async def read_predict_request(request: Request) -> PredictRequest:
    """The JSON body, parsed and validated by pydantic (a large one off the event loop,
    ``parse_large_body``); errors as FastAPI's."""
    body = await request.body()
    try:
        if len(body) > JSON_OFF_LOOP_BYTES:  # not on the event loop
            return await run_in_threadpool(parse_large_body, body)
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        # The raw body (bytes, maybe not UTF-8) is not echoed back: it may not encode.
        errors = [
            {
                **{k: v for k, v in e.items() if k != "input" or not isinstance(v, bytes)},
                "loc": ("body", *e["loc"]),
            }
            for e in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def unprocessable(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])


@router.post(
    "/v1/models/{model_id}/predict",
    response_model=PredictResponse,
    summary="Predict with uncertainty (id or alias)",
    responses={
        **AUTH_ERRORS,
        **MODEL_NOT_FOUND,
        413: {"description": "body over HETSERVE_MAX_REQUEST_BYTES"},
        503: {"description": "every decode slot stayed taken (images); retry"},
        422: {"description": "the detail's loc and msg name the offending field and index"},
    },
    openapi_extra=PREDICT_OPENAPI,
)
async def predict(request: Request) -> Response:
    # The hot path reads its path parameter and body itself (declared in PREDICT_OPENAPI)
    # and its settings and runtime from app.state: FastAPI's generic parameter, dependency
    # and body machinery cost about 0.15 ms per request (bench/serve_profile.py), more
    # than the onnxruntime call of a batched row.
    settings: Settings = request.app.state.settings
    runtime: ServingRuntime = request.app.state.runtime
    model_id = request.path_params["model_id"]
    body = await read_predict_request(request)
    if (body.inputs is None) == (body.images is None):
        raise unprocessable(["body"], "give exactly one of `inputs` or `images`")
    if body.mc_samples is not None and not 1 <= body.mc_samples <= settings.max_mc_samples:
        raise unprocessable(
            ["body", "mc_samples"], f"mc_samples must be in [1, {settings.max_mc_samples}]"
        )

    resolved_id, model = await served_model(request, runtime, model_id)
    input_shape = model.input_shape
    try:
        if body.inputs is not None and len(body.inputs) * prod(input_shape) > INPUTS_OFF_LOOP:
            x = await run_in_threadpool(
                parse_inputs, body.inputs, input_shape, settings.max_batch_rows
            )
        elif body.inputs is not None:
            x = parse_inputs(body.inputs, input_shape, settings.max_batch_rows)
        else:
            assert body.images is not None  # exactly one of the two, checked above
            x = await run_in_threadpool(decode_images, body.images, input_shape, settings)
    except InputError as exc:
        raise HTTPException(422, exc.detail()) from None
    except DecodeBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None

    if body.predictive == "noise_free":
        if not model.has_noise_free:
            raise HTTPException(
                409,
                f"model {resolved_id} was exported before the noise-free predictive existed "
                '(its ONNX file has no noise_free_probs output): use predictive "marginal", '
                "or train it again",
            )
        num_samples = 0  # the graph skips its sampler: softmax(mu / tau) alone
    else:
        # The model's own default is capped like a caller's choice (a job may ask for 100k).
        num_samples = body.mc_samples or min(model.eval_mc_samples, settings.max_mc_samples)
    outputs = await runtime.predict(model, resolved_id, x, num_samples, body.seed, then=answer_rows)
    if outputs[NON_FINITE].any():
        field, overflow = (
            "inputs" if body.inputs is not None else "images",
            int(outputs[NON_FINITE].argmax()),
        )
        raise unprocessable(
            ["body", field, overflow],
            f"{field}[{overflow}]: the model's outputs overflow for this row (values far outside"
            " the training data)",
        )
    rows = outputs[ROWS]
    if body.top_k is not None or body.correlated_pairs:
        model.add_asked(
            rows, outputs, body.top_k, body.correlated_pairs, predictive=body.predictive
        )
    return json_response(
        {
            "model_id": resolved_id,
            "mc_samples": num_samples,
            "predictive": body.predictive,
            "predictions": rows,
        }
    )


def decode_images(images: list[str], input_shape: list[int], settings: Settings) -> np.ndarray:
    """``parse_images`` in one of the decode slots uploads take (app/uploads.py): images
    sent to predict cannot take more of the API's memory and CPU than uploads may."""
    with decode_slot(settings.max_concurrent_decodes, settings.decode_wait_s):
        return parse_images(images, input_shape, settings.max_batch_rows)


async def served_model(
    request: Request, runtime: ServingRuntime, model_id: str
) -> tuple[str, OnnxModel]:
    """(model id, loaded model) of a model id or alias, through the runtime's lookup and
    session caches; 404 when there is none. Also names the model for /metrics."""
    served = runtime.directory.cached(model_id) or await run_in_threadpool(
        runtime.directory.lookup, model_id
    )
    if served is None:
        raise HTTPException(404, f"no model or alias {model_id!r}")
    resolved_id = request.state.model_id = served.model_id
    try:
        model = await runtime.model((resolved_id, served.onnx_sha256), served.path)
    except ModelFileError:  # deleted by another API process since our cached lookup
        runtime.directory.invalidate()
        raise HTTPException(404, f"model {resolved_id} is no longer available") from None
    return resolved_id, model


# the output that is NaN, by design, from one draw (models.het_formula: no spread to measure)
UNDEFINED_AT_ONE_SAMPLE = "mc_stderr"
ROWS, NON_FINITE = "_rows", "_non_finite"  # answer_rows' outputs (no graph output's names)


def answer_rows(model: OnnxModel, outputs: Outputs, num_samples: int) -> Outputs:
    """The per-batch step of predict (run once per onnxruntime call, in its thread): each
    row's JSON-ready fields (``ROWS``, ``OnnxModel.rows``) and whether any of its outputs
    is NaN or infinite (``NON_FINITE``). ``num_samples = 0`` is the noise-free predictive."""
    predictive = "noise_free" if num_samples == 0 else "marginal"
    return {
        **outputs,
        ROWS: model.rows(outputs, num_samples, predictive=predictive),
        NON_FINITE: non_finite_rows(outputs, model.output_names),
    }


def non_finite_rows(outputs: Outputs, names: list[str]) -> np.ndarray:
    """Per row, whether any of its outputs is NaN or infinite (finite but huge inputs
    overflow the logits); such a row cannot be answered in JSON. mc_stderr is left out:
    its NaN means "undefined" (S = 1), which the rows answer as null."""
    floats = [
        outputs[name]
        for name in names
        if outputs[name].dtype.kind == "f" and name != UNDEFINED_AT_ONE_SAMPLE
    ]
    bad = np.zeros(len(floats[0]), dtype=bool)
    if all(np.isfinite(value).all() for value in floats):  # the usual case: one pass each
        return bad
    for value in floats:
        bad |= ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    return bad


def first_non_finite_row(outputs: Outputs, names: list[str]) -> int | None:
    """The first row with a NaN or infinite output, or None."""
    bad = non_finite_rows(outputs, names)
    return int(np.argmax(bad)) if bad.any() else None


def json_response(payload: dict[str, Any]) -> Response:
    """orjson when installed: ~20x faster than json for a prediction's float lists."""
    if orjson is None:
        return JSONResponse(payload)
    return Response(orjson.dumps(payload), media_type="application/json")
