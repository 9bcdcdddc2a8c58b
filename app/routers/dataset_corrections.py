"""POST /v1/datasets/{dataset_id}/corrections: a new dataset from an old one plus
corrections, without copying images (app/dataset_corrections.py).

- ``/corrections/from-model`` (JSON): a model's findings: ``relabel`` the top N flagged
  rows of its label issues to the suggested class, or ``drop`` them. The model must
  have been trained on this dataset (its issues index this dataset's ``x_train``).
- ``/corrections`` (multipart ``file``): a CSV of ``index,label`` corrections a person
  made (core/corrections.py ``parse_csv``), e.g. an edited label-issues export.

201 with the new dataset (its ``lineage`` says where it came from); 422 naming the row
for bad corrections, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from app.dataset_corrections import csv_lineage, store_corrected
from app.db import session_scope
from app.deps import ArtifactsDep, SettingsDep
from app.routers import AUTH_ERRORS, Responses
from app.routers.datasets import read_limited
from app.routers.models import find_model
from app.routers.noise import label_issues_path
from app.schemas import DatasetLineage, DatasetOut
from app.serving.metrics import InstrumentedRoute
from app.settings import Settings
from app.store import Dataset, DatasetStore, Job
from core import label_issues_file
from core.corrections import CorrectionError, from_findings, parse_csv
from core.dataset_files import DatasetError

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=InstrumentedRoute)

ERRORS: Responses = {
    **AUTH_ERRORS,
    404: {"description": "no such dataset or model, or its label-issues file is gone"},
    409: {"description": "the model has no label issues, or a file by reference changed"},
    422: {
        "description": "bad corrections; the detail names the row",
        "content": {
            "application/json": {
                "example": {
                    "detail": "line 3: index 5000 is out of range: the dataset has 1200 "
                    "training rows (0 to 1199)"
                }
            }
        },
    },
}


class FromModel(BaseModel):
    """POST /v1/datasets/{id}/corrections/from-model body."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model_id": "8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a", "action": "relabel", "top": 500}
            ]
        },
    )

    model_id: str = Field(min_length=1, max_length=128, description="model id or alias")
    action: Literal["relabel", "drop"] = Field(
        description="relabel: give each row the suggested class; drop: leave it out"
    )
    top: int | None = Field(
        None, ge=1, description="the N most suspect flagged rows; default every flagged row"
    )
    name: str | None = Field(None, max_length=255, description="display name of the new dataset")


def multiclass_parent(settings: Settings, dataset_id: str) -> Dataset:
    """The dataset row, detached (no transaction stays open while the child is written)."""
    with session_scope(settings) as session:
        parent = DatasetStore(session).get(dataset_id)
        if parent is None:
            raise HTTPException(404, f"dataset {dataset_id} not found")
        session.expunge(parent)
    if parent.task != "multiclass":
        raise HTTPException(422, "corrections are for multiclass datasets (one label per row)")
    return parent


@contextmanager
def correction_errors(parent: Dataset) -> Iterator[None]:
    """store_corrected's errors as answers: nothing left to train on 422, a file by
    reference changed 409, the parent's data missing 404."""
    try:
        yield
    except CorrectionError as exc:
        raise HTTPException(422, str(exc)) from None
    except DatasetError as exc:  # a file by reference changed since it was registered
        raise HTTPException(409, str(exc)) from None
    except FileNotFoundError:
        raise HTTPException(
            404, f"the data of dataset {parent.id} is missing from the artifact store"
        ) from None


@router.post(
    "/{dataset_id}/corrections/from-model",
    status_code=201,
    response_model=DatasetOut,
    responses=ERRORS,
    summary="A new dataset: relabel or drop the top N rows a model flagged",
)
def correct_from_model(
    dataset_id: str, body: FromModel, settings: SettingsDep, artifacts: ArtifactsDep
) -> DatasetOut:
    parent = multiclass_parent(settings, dataset_id)
    with session_scope(settings) as session:
        model = find_model(session, body.model_id)
        job = session.get(Job, model.job_id)
        assert job is not None  # a model's job outlives it (models.job_id references jobs.id)
        if job.dataset_id != parent.id:
            raise HTTPException(
                422,
                f"model {model.id} was trained on dataset {job.dataset_id}, not {parent.id}: "
                "its findings index another dataset's rows",
            )
        model_id, path = model.id, label_issues_path(model, artifacts)
    selection = label_issues_file.read_selection(path, limit=body.top, flagged_only=True)
    if selection["num_matching"] == 0:
        raise HTTPException(422, f"model {model_id} flags no rows: nothing to correct")
    corrections = from_findings(selection["arrays"], body.action, body.top)
    lineage = DatasetLineage(
        parent_dataset_id=parent.id,
        rule=body.action,
        model_id=model_id,
        top=body.top,
        num_relabelled=len(corrections.relabel),
        num_dropped=len(corrections.drop),
    )
    with correction_errors(parent):
        return store_corrected(parent, corrections, lineage, body.name, settings, artifacts)


@router.post(
    "/{dataset_id}/corrections",
    status_code=201,
    response_model=DatasetOut,
    responses=ERRORS,
    summary="A new dataset: relabel the rows an uploaded index,label CSV names",
)
def correct_from_csv(
    dataset_id: str,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
    file: UploadFile = File(
        ...,
        description="CSV of index,label lines (optional header index,label): index a row "
        "of x_train, label a class name or index",
    ),
    name: str | None = Form(None, max_length=255, description="display name"),
) -> DatasetOut:
    parent = multiclass_parent(settings, dataset_id)
    data = read_limited(file, settings.max_json_body_bytes)
    try:
        corrections = parse_csv(data, parent.num_train, list(parent.class_names))
    except CorrectionError as exc:
        raise HTTPException(422, str(exc)) from None
    lineage = csv_lineage(parent.id, data, corrections)
    with correction_errors(parent):
        return store_corrected(parent, corrections, lineage, name, settings, artifacts)
