"""The model registry: ``GET /v1/models``, ``GET /v1/models/{model_id}``,
``GET /v1/models/{model_id}/onnx``, ``DELETE /v1/models/{model_id}``.

Every ``{model_id}`` except DELETE's also takes an alias name (app/routers/aliases.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import disk_space
from app.deps import ArtifactsDep, RuntimeDep, SessionDep, SettingsDep
from app.retention import deletion
from app.routers import AUTH_ERRORS, MODEL_FILE_CHANGED, MODEL_NOT_FOUND
from app.routers.predict import ServingRoute
from app.serving.schemas import ModelOut
from app.store import Job, Model, ModelStore

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=ServingRoute)

MAX_LIST = 1000
MAX_OFFSET = 2**62  # the store's integers are 64-bit: a larger offset is a 422, not a 500

ModelRef = Annotated[
    str, PathParam(min_length=1, max_length=128, description="a model id or an alias name")
]


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


@router.get(
    "",
    response_model=list[ModelOut],
    responses=AUTH_ERRORS,
    summary="Registered models, newest first",
)
def list_models(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    role: Literal["model", "baseline"] | None = None,
) -> list[ModelOut]:
    models = ModelStore(session).list(limit=limit, offset=offset, role=role)
    baselines = baseline_ids(session, models)
    return [model_out(m, baselines.get(m.job_id) if m.role == "model" else None) for m in models]


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    responses={**AUTH_ERRORS, **MODEL_NOT_FOUND},
    summary="One model (id or alias)",
)
def get_model(request: Request, model_id: ModelRef, session: SessionDep) -> ModelOut:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    baseline = baseline_ids(session, [model]).get(model.job_id) if model.role == "model" else None
    return model_out(model, baseline)


@router.get(
    "/{model_id}/onnx",
    summary="The model's self-contained ONNX file (sampling inside)",
    responses={
        **AUTH_ERRORS,
        **MODEL_NOT_FOUND,
        **MODEL_FILE_CHANGED,
        200: {"content": {"application/octet-stream": {}}},
    },
)
def get_onnx(
    request: Request,
    model_id: ModelRef,
    session: SessionDep,
    artifacts: ArtifactsDep,
    runtime: RuntimeDep,
) -> FileResponse:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    path = artifacts.resolve(model.onnx_path)
    if not path.is_file():
        raise HTTPException(
            404, f"the ONNX file of model {model.id} is missing from the artifact store"
        )
    runtime.sessions.verify(model.id, model.onnx_sha256, path)  # 409 when it does not match
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{model.id}.onnx",
        headers={"X-Onnx-Sha256": model.onnx_sha256},
    )


@router.delete(
    "/{model_id}",
    status_code=204,
    summary="Remove a model (by id; refused while an alias points at it)",
    responses={
        **AUTH_ERRORS,
        404: {"description": "no model with that id"},
        409: {"description": "an alias points at the model"},
    },
)
def delete_model(
    model_id: ModelRef, settings: SettingsDep, artifacts: ArtifactsDep, runtime: RuntimeDep
) -> Response:
    try:
        disk_space.releasing_reserve(
            settings.data_dir, lambda: deletion.delete_model(settings, artifacts, model_id)
        )
    except deletion.ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except deletion.ModelConflict as exc:
        raise HTTPException(409, str(exc)) from None
    runtime.directory.invalidate()
    runtime.sessions.forget(model_id)
    return Response(status_code=204)
