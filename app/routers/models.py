"""The model registry, aliases, predictions with uncertainty, and /metrics.

- ``GET /v1/models``, ``GET /v1/models/{model_id}``, ``GET /v1/models/{model_id}/onnx``,
  ``DELETE /v1/models/{model_id}``
- ``PUT|DELETE /v1/aliases/{name}``, ``GET /v1/aliases``: a stable name (``production``)
  pointing at a model id; every ``{model_id}`` above except DELETE also takes an alias.
- ``POST /v1/models/{model_id}/predict``: DESIGN §2 fields per row, from the model's
  ONNX file run by onnxruntime (app/serving: session cache, dynamic batching).
- ``GET /metrics``: Prometheus, no API key (DESIGN §5).

An alias is read from the store on every request, so moving it takes effect at once in
every API process; a request already past that read finishes on the model it resolved
(which stays registered), so moving an alias under load drops nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.artifacts import ArtifactStore
from app.auth import bearer, require_api_key
from app.db import session_scope
from app.routers import get_artifacts, get_session
from app.serving import metrics
from app.serving.inputs import InputError, parse_images, parse_inputs
from app.serving.onnx_model import ModelFileError
from app.serving.runtime import ServingRuntime
from app.serving.schemas import (
    ALIAS_PATTERN,
    AliasIn,
    AliasOut,
    ModelOut,
    PredictRequest,
    PredictResponse,
)
from app.settings import Settings
from app.store import Alias, Job, Model, ModelStore

try:
    import orjson
except ImportError:  # an optional speedup; the standard library encodes the same JSON
    orjson = None

MAX_LIST = 1000
MAX_OFFSET = 2**62  # the store's integers are 64-bit: a larger offset is a 422, not a 500


class LimitedBodyRequest(Request):
    """A request whose body stream stops with 413 past ``limit`` bytes, whatever
    Content-Length claimed (a chunked or lying client is cut off as it streams)."""

    limit: int = 0

    async def stream(self):
        received = 0
        async for chunk in super().stream():
            received += len(chunk)
            if received > self.limit:
                raise HTTPException(413, f"request body exceeds the limit of {self.limit} bytes")
            yield chunk


class ServingRoute(APIRoute):
    """Counted and timed for /metrics; bodies capped at settings.max_request_bytes."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            limit = request.app.state.settings.max_request_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise HTTPException(
                    413, f"request body of {declared} bytes exceeds the limit of {limit} bytes"
                )
            capped = LimitedBodyRequest(request.scope, request.receive)
            capped.limit = limit
            return await handler(capped)

        return metrics.instrument(limited, self.path, self.methods)


router = APIRouter(route_class=ServingRoute)


async def api_key(request: Request, credentials=Depends(bearer)) -> str:
    """app.auth.require_api_key, called on the event loop: as a plain ``def`` dependency
    FastAPI would hop to a worker thread for a few microseconds of hmac on every request."""
    return require_api_key(request, credentials)


auth = [Depends(api_key)]
# Commit before the response is sent (scope="function"): with the default scope the
# commit runs after it, and a client's next request could miss its own write.
SESSION = Depends(get_session, scope="function")

ModelRef = Annotated[
    str, PathParam(min_length=1, max_length=128, description="a model id or an alias name")
]
AliasName = Annotated[
    str,
    PathParam(pattern=ALIAS_PATTERN, description="letters, digits, _ . - ; starts with a letter"),
]

NOT_FOUND = {404: {"description": "no model with that id or alias"}}
AUTH_ERRORS = {401: {"description": "missing or invalid API key"}}


def runtime_of(request: Request) -> ServingRuntime:
    """This app's serving runtime, built by the app's lifespan (one per process)."""
    return request.app.state.runtime


def model_out(model: Model, baseline_model_id: str | None) -> ModelOut:
    out = ModelOut.model_validate(model)
    out.baseline_model_id = baseline_model_id
    return out


def baseline_ids(session: Session, models: list[Model]) -> dict[str, str | None]:
    """job id -> the job's baseline model id, for the role='model' rows given."""
    job_ids = {m.job_id for m in models if m.role == "model"}
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.baseline_model_id).where(Job.id.in_(job_ids)))
    return dict(rows.tuples().all())


def find_model(session: Session, model_ref: str) -> Model:
    model = ModelStore(session).resolve(model_ref)
    if model is None:
        raise HTTPException(404, f"no model or alias {model_ref!r}")
    return model


# -- registry ----------------------------------------------------------------------


@router.get(
    "/v1/models",
    response_model=list[ModelOut],
    dependencies=auth,
    responses=AUTH_ERRORS,
    tags=["models"],
    summary="Registered models, newest first",
)
def list_models(
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    role: Literal["model", "baseline"] | None = None,
    session: Session = SESSION,
) -> list[ModelOut]:
    models = ModelStore(session).list(limit=limit, offset=offset, role=role)
    baselines = baseline_ids(session, models)
    return [model_out(m, baselines.get(m.job_id) if m.role == "model" else None) for m in models]


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelOut,
    dependencies=auth,
    responses={**AUTH_ERRORS, **NOT_FOUND},
    tags=["models"],
    summary="One model (id or alias)",
)
def get_model(request: Request, model_id: ModelRef, session: Session = SESSION) -> ModelOut:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    baseline = baseline_ids(session, [model]).get(model.job_id) if model.role == "model" else None
    return model_out(model, baseline)


@router.get(
    "/v1/models/{model_id}/onnx",
    dependencies=auth,
    tags=["models"],
    summary="The model's self-contained ONNX file (sampling inside)",
    responses={**AUTH_ERRORS, **NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
)
def get_onnx(
    request: Request,
    model_id: ModelRef,
    session: Session = SESSION,
    artifacts: ArtifactStore = Depends(get_artifacts),
) -> FileResponse:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    path = artifacts.resolve(model.onnx_path)
    if not path.is_file():
        raise HTTPException(
            404, f"the ONNX file of model {model.id} is missing from the artifact store"
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{model.id}.onnx",
        headers={"X-Onnx-Sha256": model.onnx_sha256},
    )


@router.delete(
    "/v1/models/{model_id}",
    status_code=204,
    dependencies=auth,
    tags=["models"],
    summary="Remove a model (by id; refused while an alias points at it)",
    responses={
        **AUTH_ERRORS,
        404: {"description": "no model with that id"},
        409: {"description": "an alias points at the model"},
    },
)
def delete_model(
    request: Request,
    model_id: ModelRef,
    session: Session = SESSION,
    artifacts: ArtifactStore = Depends(get_artifacts),
) -> Response:
    model = session.get(Model, model_id, with_for_update=True)
    if model is None:
        raise HTTPException(404, f"no model {model_id!r}")
    aliases = list(session.scalars(select(Alias.name).where(Alias.model_id == model.id)))
    if aliases:
        raise HTTPException(
            409, f"aliases {aliases} point at model {model.id}: move or delete them first"
        )
    onnx_path = model.onnx_path
    session.delete(model)
    session.flush()
    # Content-addressed: another model may share the file (same weights exported twice).
    shared = session.scalar(
        select(func.count()).select_from(Model).where(Model.onnx_path == onnx_path)
    )
    session.commit()
    if not shared:
        artifacts.remove(onnx_path)
    runtime = runtime_of(request)
    runtime.directory.invalidate()
    runtime.sessions.forget(model_id)
    return Response(status_code=204)


# -- aliases -----------------------------------------------------------------------


@router.put(
    "/v1/aliases/{name}",
    response_model=AliasOut,
    dependencies=auth,
    tags=["aliases"],
    summary="Point an alias at a model (create or move)",
    responses={**AUTH_ERRORS, 422: {"description": "bad name, or no model with that id"}},
)
def put_alias(
    request: Request, name: AliasName, body: AliasIn, session: Session = SESSION
) -> AliasOut:
    if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
        raise HTTPException(
            422,
            [
                {
                    "loc": ["path", "name"],
                    "msg": "an alias may not look like a model id",
                    "type": "value_error",
                }
            ],
        )
    store = ModelStore(session)
    if store.get(body.model_id) is None:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", "model_id"],
                    "msg": f"no model {body.model_id!r}",
                    "type": "value_error",
                }
            ],
        )
    alias = AliasOut.model_validate(store.set_alias(name, body.model_id))
    session.commit()  # before forgetting cached lookups, or one could be re-cached stale
    runtime_of(request).directory.invalidate()
    return alias


@router.get(
    "/v1/aliases",
    response_model=list[AliasOut],
    dependencies=auth,
    responses=AUTH_ERRORS,
    tags=["aliases"],
    summary="Every alias",
)
def list_aliases(session: Session = SESSION) -> list[AliasOut]:
    return [AliasOut.model_validate(a) for a in ModelStore(session).list_aliases()]


@router.delete(
    "/v1/aliases/{name}",
    status_code=204,
    dependencies=auth,
    tags=["aliases"],
    summary="Remove an alias (the model stays)",
    responses={**AUTH_ERRORS, 404: {"description": "no such alias"}},
)
def delete_alias(
    request: Request, name: Annotated[str, PathParam(max_length=128)], session: Session = SESSION
) -> Response:
    if not ModelStore(session).delete_alias(name):
        raise HTTPException(404, f"no alias {name!r}")
    session.commit()
    runtime_of(request).directory.invalidate()
    return Response(status_code=204)


# -- prediction ----------------------------------------------------------------------


PREDICT_OPENAPI = {
    "security": [{"HTTPBearer": []}],
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
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
}


async def read_predict_request(request: Request) -> PredictRequest:
    """The JSON body, parsed and validated in one pass by pydantic; errors as FastAPI's."""
    try:
        return PredictRequest.model_validate_json(await request.body())
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


def unprocessable(loc: list, msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])


@router.post(
    "/v1/models/{model_id}/predict",
    response_model=PredictResponse,
    tags=["predict"],
    summary="Predict with uncertainty (id or alias)",
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        413: {"description": "body over HETSERVE_MAX_REQUEST_BYTES"},
        422: {"description": "the detail's loc and msg name the offending field and index"},
    },
    openapi_extra=PREDICT_OPENAPI,
)
async def predict(request: Request) -> Response:
    # The hot path checks the key and reads its path parameter and body itself (declared
    # in PREDICT_OPENAPI): FastAPI's generic dependency and body machinery cost about
    # half a millisecond per request, more than the onnxruntime call of a batched row.
    require_api_key(request, await bearer(request))
    model_id = request.path_params["model_id"]
    body = await read_predict_request(request)
    settings: Settings = request.app.state.settings
    if (body.inputs is None) == (body.images is None):
        raise unprocessable(["body"], "give exactly one of `inputs` or `images`")
    if body.mc_samples is not None and not 1 <= body.mc_samples <= settings.max_mc_samples:
        raise unprocessable(
            ["body", "mc_samples"], f"mc_samples must be in [1, {settings.max_mc_samples}]"
        )

    runtime = runtime_of(request)
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
    input_shape = model.input_shape
    try:
        if body.inputs is not None:
            x = parse_inputs(body.inputs, input_shape, settings.max_batch_rows)
        else:
            x = await run_in_threadpool(
                parse_images, body.images, input_shape, settings.max_batch_rows
            )
    except InputError as exc:
        raise HTTPException(422, exc.detail()) from None

    # The model's own default is capped like a caller's choice (a job may ask for 100k).
    num_samples = body.mc_samples or min(model.eval_mc_samples, settings.max_mc_samples)
    outputs = await runtime.predict(model, resolved_id, x, num_samples, body.seed)
    field = "inputs" if body.inputs is not None else "images"
    overflow = first_non_finite_row(outputs, model.output_names)
    if overflow is not None:
        raise unprocessable(
            ["body", field, overflow],
            f"{field}[{overflow}]: the model's outputs overflow for this row (values far outside"
            " the training data)",
        )
    rows = model.rows(
        outputs, num_samples, top_k=body.top_k, correlated_pairs=body.correlated_pairs
    )
    return json_response({"model_id": resolved_id, "mc_samples": num_samples, "predictions": rows})


def first_non_finite_row(outputs: dict, names: list[str]) -> int | None:
    """The first row with a NaN or infinite output (finite but huge inputs overflow the
    logits), or None; such a row cannot be answered in JSON."""
    floats = [outputs[name] for name in names if outputs[name].dtype.kind == "f"]
    if all(np.isfinite(value).all() for value in floats):  # the usual case: one pass each
        return None
    bad = np.zeros(len(floats[0]), dtype=bool)
    for value in floats:
        bad |= ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    return int(np.argmax(bad))


def json_response(payload: dict) -> Response:
    """orjson when installed: ~20x faster than json for a prediction's float lists."""
    if orjson is None:
        return JSONResponse(payload)
    return Response(orjson.dumps(payload), media_type="application/json")


# -- metrics -------------------------------------------------------------------------


def count_jobs_by_status(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as session:
        return dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all()
        )


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics (no API key)",
    responses={200: {"content": {"text/plain": {}}}},
)
def prometheus_metrics(request: Request) -> Response:
    settings = request.app.state.settings
    return metrics.exposition(metrics.JobsByStatus(lambda: count_jobs_by_status(settings)))
