"""What a trained model knows about its training labels:
``GET /v1/models/{model_id}/noise`` (the noise report) and
``GET /v1/models/{model_id}/label-issues`` (the rows most likely mislabeled).

Both were computed by the worker when the model was trained, over every row of the
dataset's uploaded ``x_train`` (models/label_knowledge.py), and are only read
here. ``{model_id}`` is a model id or an alias.

409 (with the reason) when the model has no such thing: a softmax baseline has no
noise model (its label issues exist: from its own softmax), multilabel models have
neither, and models trained before they were computed have neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from app.artifacts import ArtifactStore
from app.deps import ArtifactsDep, SessionDep
from app.label_issues_csv import CSV_RESPONSE, csv_response
from app.routers import AUTH_ERRORS, MODEL_NOT_FOUND, Responses
from app.routers.models import ModelRef, find_model
from app.routers.predict import ServingRoute
from app.serving.schemas import LabelIssue, LabelIssuesOut, NoiseReportOut
from app.store import Dataset, Job, Model
from core import label_issues_file

router = APIRouter(prefix="/v1/models", tags=["noise"], route_class=ServingRoute)

MAX_ISSUES = 10_000
NOT_COMPUTED: Responses = {409: {"description": "the model has none (the detail says why)"}}


def not_computed(model: Model, what: str) -> HTTPException:
    return HTTPException(
        409,
        f"model {model.id} has no {what}: it was trained before {what}s were computed; "
        "train it again to get one",
    )


def label_issues_path(model: Model, artifacts: ArtifactStore) -> Path:
    """The model's label-issues file: 409 when none was computed, 404 when it is gone."""
    if model.label_issues_path is None:
        raise not_computed(model, "label issue")
    path = artifacts.resolve(model.label_issues_path)
    if not path.is_file():
        raise HTTPException(
            404, f"the label issues of model {model.id} are missing from the artifact store"
        )
    return path


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
    responses={**AUTH_ERRORS, **MODEL_NOT_FOUND, **NOT_COMPUTED, **CSV_RESPONSE},
    summary="Training rows most likely mislabeled, most suspect first (id or alias)",
)
def get_label_issues(
    request: Request,
    model_id: ModelRef,
    session: SessionDep,
    artifacts: ArtifactsDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="csv: streamed, with class names and files")
    ] = "json",
    limit: Annotated[
        int | None,
        Query(ge=1, description=f"json: default 100, at most {MAX_ISSUES}; csv: default all"),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="skip this many")] = 0,
    flagged: Annotated[bool, Query(description="only rows in the flagged set")] = False,
    given: Annotated[int | None, Query(ge=0, description="only rows given this class")] = None,
    suggested: Annotated[
        int | None, Query(ge=0, description="only rows this class is suggested for")
    ] = None,
) -> LabelIssuesOut | StreamingResponse:
    model = find_model(session, model_id)
    request.state.model_id = model.id
    if model.task != "multiclass":
        raise multilabel(model, "label issue")
    if format == "json" and limit is not None and limit > MAX_ISSUES:
        raise HTTPException(422, f"limit is at most {MAX_ISSUES} (format=csv has no limit)")
    for name, value in (("given", given), ("suggested", suggested)):
        if value is not None and value >= model.num_classes:
            raise HTTPException(
                422, f"{name}={value} is not a class of the model (0 to {model.num_classes - 1})"
            )
    path = label_issues_path(model, artifacts)
    job = session.get(Job, model.job_id)
    assert job is not None  # a model's job outlives it (models.job_id references jobs.id)
    selection = label_issues_file.read_selection(
        path,
        offset=offset,
        limit=limit if limit is not None or format == "csv" else 100,
        flagged_only=flagged,
        given=given,
        suggested=suggested,
    )
    names = list(model.class_names)
    if format == "csv":
        dataset = session.get(Dataset, job.dataset_id)
        assert dataset is not None  # a job's dataset outlives it (jobs.dataset_id)
        return csv_response(model.id, selection["arrays"], names, dataset, artifacts)
    arrays = selection["arrays"]
    return LabelIssuesOut(
        model_id=model.id,
        dataset_id=job.dataset_id,
        num_examples=selection["num_examples"],
        num_flagged=selection["num_flagged"],
        num_matching=selection["num_matching"],
        offset=offset,
        issues=[
            LabelIssue(
                **issue,
                given_name=names[issue["given_label"]],
                suggested_name=names[issue["suggested_label"]],
            )
            for issue in label_issues_file.issues(arrays)
        ],
    )
