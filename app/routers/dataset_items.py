"""GET /v1/datasets/{dataset_id}/items/{index}: one training example of a dataset.

``index`` is a row of the dataset's ``x_train`` as registered: the rows a model's label
issues name. ``format=png`` (the default for image data): the image as training sees it
(decoded and resized as at training, at most core.dataset_items.THUMBNAIL_SIDE pixels a
side); a file registered by reference is checked against the dataset's manifest first,
so a file changed since registration is refused (409), never shown as if it were the
one trained on. ``format=json``: the label and, for vector data, the row's values (for
image data the file's path or URI instead).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app.db import session_scope
from app.deps import ArtifactsDep, SettingsDep
from app.routers import AUTH_ERRORS, Responses
from app.serving.metrics import InstrumentedRoute
from app.store import DatasetStore
from core.dataset_files import DatasetError
from core.dataset_items import REFERENCE_FORMATS, png_bytes, read_train_item, train_locations

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=InstrumentedRoute)

ERRORS: Responses = {
    **AUTH_ERRORS,
    200: {
        "content": {"image/png": {}},
        "description": "format=png: the image; format=json: DatasetItemOut",
    },
    404: {"description": "no such dataset or training row (or its data is missing)"},
    409: {"description": "the file registered by reference changed or went missing"},
    422: {"description": "format=png for a dataset of vectors"},
}


class DatasetItemOut(BaseModel):
    dataset_id: str
    index: int = Field(description="the row of x_train")
    label: int | list[float] = Field(description="class index (multilabel: the 0/1 vector)")
    label_names: list[str] = Field(description="the class name(s) of the label")
    file: str | None = Field(None, description="image folders by reference: the file's path or URI")
    values: list[float] | None = Field(None, description="vector data: the row's features")
    shape: list[int] = Field(description="the row's shape (an image: [C, H, W])")


@lru_cache(maxsize=8)
def _manifest(path: Path) -> dict[str, Any]:
    """A dataset's manifest: content-addressed, so a cached read never goes stale."""
    return json.loads(path.read_text())


@router.get(
    "/{dataset_id}/items/{index}",
    response_model=DatasetItemOut,
    responses=ERRORS,
    summary="One training example: a small PNG of an image, or a row's values as JSON",
)
def get_dataset_item(
    dataset_id: str,
    index: int,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
    format: Annotated[
        Literal["png", "json"] | None,
        Query(description="default: png for image data, json for vectors"),
    ] = None,
) -> Any:
    with session_scope(settings) as session:
        dataset = DatasetStore(session).get(dataset_id)
        if dataset is None:
            raise HTTPException(404, f"dataset {dataset_id} not found")
        fmt, relative, num_train = dataset.format, dataset.artifact_path, dataset.num_train
        class_names, task = list(dataset.class_names), dataset.task
        is_image = len(dataset.input_shape) == 3
    if not 0 <= index < num_train:
        raise HTTPException(
            404,
            f"dataset {dataset_id} has no training row {index} "
            f"({num_train} rows: 0 to {num_train - 1})",
        )
    format = format or ("png" if is_image else "json")
    if format == "png" and not is_image:
        raise HTTPException(422, f"dataset {dataset_id} holds vectors, not images: format=json")
    path = artifacts.resolve(relative)
    if not path.is_file():
        raise HTTPException(
            404, f"the data of dataset {dataset_id} is missing from the artifact store"
        )
    manifest = _manifest(path) if fmt in REFERENCE_FORMATS else None
    try:
        if manifest is not None:
            x, y = read_train_item(
                manifest, index, settings.s3_endpoint_url, settings.dataset_root_list
            )
        else:
            with path.open("rb") as f:
                x, y = read_train_item(f, index)
        image = png_bytes(x) if format == "png" else None
    except DatasetError as exc:
        raise HTTPException(409, str(exc)) from None
    if image is not None:
        return Response(image, media_type="image/png", headers={"Cache-Control": "no-store"})
    if task == "multiclass":
        label: int | list[float] = int(y)
        names = [class_names[int(y)]]
    else:
        label = [float(v) for v in y]
        names = [class_names[k] for k, v in enumerate(y) if v]
    locations = train_locations(manifest) if manifest is not None else None
    return DatasetItemOut(
        dataset_id=dataset_id,
        index=index,
        label=label,
        label_names=names,
        file=locations[index] if locations is not None else None,
        values=None if is_image else [float(v) for v in x.ravel()],
        shape=list(x.shape),
    )
