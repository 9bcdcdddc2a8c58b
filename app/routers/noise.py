"""What a trained model knows about its training labels:
``GET /v1/models/{model_id}/noise`` (the noise report) and
``GET /v1/models/{model_id}/label-issues`` (the rows most likely mislabeled).

Both were computed by the worker when the model was trained, over every row of the
dataset's uploaded ``x_train`` (worker/jobs.py ``label_knowledge``), and are only read
here. ``{model_id}`` is a model id or an alias.

409 (with the reason) when the model has no such thing: a softmax baseline has no
noise model (its label issues exist: from its own softmax), multilabel models have
neither, and models trained before they were computed have neither.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from app import label_issues_file
from app.deps import ArtifactsDep, SessionDep
from app.routers import AUTH_ERRORS, MODEL_NOT_FOUND, Responses
from app.routers.models import ModelRef, find_model
from app.routers.predict import ServingRoute
from app.serving.schemas import LabelIssuesOut, NoiseReportOut
from app.store import Job, Model

router = APIRouter(prefix="/v1/models", tags=["noise"], route_class=ServingRoute)

MAX_ISSUES = 10_000
NOT_COMPUTED: Responses = {409: {"description": "the model has none (the detail says why)"}}


def not_computed(model: Model, what: str) -> HTTPException:
    return HTTPException(
        409,
        f"model {model.id} has no {what}: it was trained before {what}s were computed; "
        "train it again to get one",
    )


def multilabel(model: Model, what: str) -> HTTPException:
    return HTTPException(
        409, f"model {model.id} is multilabel: {what}s are defined for multiclass models only"
    )


@router.get(
    "/{model_id}/noise",
    response_model=NoiseReportOut,
    responses={**AUTH_ERRORS, **MODEL_NOT_FOUND, **NOT_COMPUTED},
    summary="The model's label noise aggregated over its training inputs (id or alias)",
)
def get_noise_report(request: Request, model_id: ModelRef, session: SessionDep) -> NoiseReportOut:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    if model.head == "softmax":
        raise HTTPException(409, "a softmax baseline has no noise model: no noise report")
    if model.task != "multiclass":
        raise multilabel(model, "noise report")
    report = model.noise_report
    if report is None:
        raise not_computed(model, "noise report")
    if "unavailable" in report:
        raise HTTPException(409, f"model {model.id} has no noise report: {report['unavailable']}")
    names = model.class_names
    return NoiseReportOut(
        model_id=model.id,
        num_examples=report["num_examples"],
        class_pairs=[
            {**pair, "class_names": [names[i] for i in pair["classes"]]}
            for pair in report["class_pairs"]
        ],
        flip_matrix=report["flip_matrix"],
        noise_std_by_class=report["noise_std_by_class"],
    )


@router.get(
    "/{model_id}/label-issues",
    response_model=LabelIssuesOut,
    responses={**AUTH_ERRORS, **MODEL_NOT_FOUND, **NOT_COMPUTED},
    summary="Training rows most likely mislabeled, most suspect first (id or alias)",
)
def get_label_issues(
    request: Request,
    model_id: ModelRef,
    session: SessionDep,
    artifacts: ArtifactsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_ISSUES)] = 100,
    offset: Annotated[int, Query(ge=0, description="entries to skip: the next page")] = 0,
) -> LabelIssuesOut:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    if model.task != "multiclass":
        raise multilabel(model, "label issue")
    if model.label_issues_path is None:
        raise not_computed(model, "label issue")
    path = artifacts.resolve(model.label_issues_path)
    if not path.is_file():
        raise HTTPException(
            404, f"the label issues of model {model.id} are missing from the artifact store"
        )
    job = session.get(Job, model.job_id)
    assert job is not None  # a model's job outlives it (models.job_id references jobs.id)
    dataset_id = job.dataset_id
    return LabelIssuesOut(
        model_id=model.id, dataset_id=dataset_id, **label_issues_file.read_head(path, limit, offset)
    )
