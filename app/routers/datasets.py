"""POST/GET/DELETE /v1/datasets: upload, register by reference, inspect, remove datasets.

An upload is parsed and validated completely in memory before anything is written;
then the canonical .npz goes into the content-addressed artifact store and one row into
the store. A failure at any point leaves neither behind: a full data volume is a 507
(app/errors.py). A delete works on a full volume too (app/disk_space.py's reserve).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from sqlalchemy.orm import Session

from app import disk_space
from app.artifact_release import change_then_remove_unreferenced, remove_if_unreferenced
from app.artifacts import ArtifactStore
from app.db import session_scope
from app.deps import ArtifactsDep, SessionDep, SettingsDep
from app.routers import AUTH_ERRORS, Responses
from app.schemas import DatasetOut, DatasetReference
from app.serving.metrics import InstrumentedRoute
from app.settings import Settings
from app.store import DatasetStore, InUseError
from app.uploads import UploadError, parse_upload

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    route_class=InstrumentedRoute,
)

ERRORS: Responses = {
    **AUTH_ERRORS,
    413: {"description": "upload larger than HETSERVE_MAX_UPLOAD_BYTES"},
    415: {"description": "not a .npz, .csv or .zip"},
    507: {"description": "no space left on the data volume"},
    422: {
        "description": "malformed dataset; the detail names the problem",
        "content": {
            "application/json": {
                "example": {
                    "detail": "x_train has 100 rows but y_train has 99 (mismatched lengths)"
                }
            }
        },
    },
}


REFERENCE_BODY = {
    "requestBody": {
        "content": {
            # Two bodies share the route, so `file` is optional in its signature; a
            # multipart upload without one is a 422: the schema says it is required.
            "multipart/form-data": {
                "schema": {
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "contentMediaType": "application/octet-stream"}
                    },
                }
            },
            "application/json": {
                "schema": DatasetReference.model_json_schema(),
                "example": {"uri": "file:///data/products", "image_size": 64},
            },
        }
    }
}


async def json_reference(request: Request) -> dict[str, Any] | None:
    """A JSON body (registration by reference), else None (a multipart upload)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return None
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "the JSON body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the JSON body must be an object with a `uri`")
    return body


def register_reference(
    body: dict[str, Any], settings: Settings, artifacts: ArtifactStore
) -> DatasetOut:
    """Register a dataset that stays where it is: validate it in place, store its
    manifest (content-addressed JSON) as the dataset's artifact."""
    from pydantic import ValidationError

    from app.dataset_refs import ReferenceRefused, scan_uri

    try:
        ref = DatasetReference.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(422, jsonable_encoder(exc.errors(include_url=False))) from None
    try:
        manifest, manifest_bytes = scan_uri(ref, settings)
    except ReferenceRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    counts = manifest["counts"]
    return store_dataset(
        settings,
        artifacts,
        manifest_bytes,
        ".manifest.json",
        name=ref.name or ref.uri,
        format=manifest["format"],
        task=manifest["task"],
        **counts,
        input_shape=manifest["input_shape"],
        num_classes=len(manifest["class_names"]),
        class_names=manifest["class_names"],
    )


def read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read the upload, refusing (413) as soon as it exceeds `limit` bytes."""
    chunks, total = [], 0
    while chunk := upload.file.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={
        **ERRORS,
        403: {"description": "registration by reference is off, or the URI is outside the roots"},
    },
    summary="Upload a dataset, or register one by reference",
    openapi_extra=REFERENCE_BODY,
)
def upload_dataset(
    request: Request,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
    reference: dict[str, Any] | None = Depends(json_reference),
    file: UploadFile | None = File(
        None,
        description=".npz (x_train, y_train, optional x_val/y_val/x_test/y_test/class_names), .csv (label column + numeric features) or .zip (train/<class>/*.png|jpg, optional val/ test/)",
    ),
    name: str | None = Form(
        None, max_length=255, description="display name; default the file name"
    ),
    image_size: int = Form(
        32, ge=4, le=512, description=".zip only: images are resized to image_size × image_size"
    ),
    grayscale: bool = Form(False, description=".zip only: decode images as one channel"),
) -> DatasetOut:
    from app.uploads import DecodeBusy, TooLarge, decode_slot

    if reference is not None:
        return register_reference(reference, settings, artifacts)
    if file is None:
        raise HTTPException(
            422, 'give a multipart `file` upload or a JSON body {"uri": "file:///..."}'
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes")
    data = read_limited(file, settings.max_upload_bytes)
    filename = file.filename or "upload"
    if not filename.lower().endswith((".npz", ".csv", ".zip")):
        raise HTTPException(415, f"unsupported file type {filename!r}: upload a .npz, .csv or .zip")
    try:
        # Each decode may expand to max_expanded_bytes: a bounded number at once.
        with decode_slot(settings.max_concurrent_decodes, settings.decode_wait_s):
            fmt, canonical, dataset = parse_upload(
                filename,
                data,
                settings.max_upload_bytes,
                image_size=image_size,
                grayscale=grayscale,
                max_expanded_bytes=settings.max_expanded_bytes,
            )
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except UploadError as exc:
        raise HTTPException(422, str(exc)) from None
    except DecodeBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    return store_dataset(
        settings,
        artifacts,
        canonical,
        ".npz",
        name=name or filename,
        format=fmt,
        task=dataset.task,
        **dataset.counts,
        input_shape=dataset.input_shape,
        num_classes=len(dataset.class_names),
        class_names=dataset.class_names,
    )


def store_dataset(
    settings: Settings, artifacts: ArtifactStore, content: bytes, suffix: str, **fields: Any
) -> DatasetOut:
    """Add the dataset's row and write its content-addressed file (the canonical .npz of
    an upload, or the manifest of a dataset registered by reference).

    Under the artifact's lock (the one delete takes): the row is added and the file
    written (again, if a delete of the same bytes just removed it) before any delete of
    the same bytes can count the rows."""
    sha256 = hashlib.sha256(content).hexdigest()
    relative = artifacts.relative_path(sha256, suffix)
    try:
        with session_scope(settings) as session:
            store = DatasetStore(session)
            store.lock_artifact(relative)
            row = store.add(
                **fields, sha256=sha256, size_bytes=len(content), artifact_path=relative
            )
            artifacts.put_bytes(content, suffix)
            out = DatasetOut.model_validate(row)
    except BaseException:
        remove_if_unreferenced(settings, artifacts, [relative])
        raise
    return out


@router.get(
    "", response_model=list[DatasetOut], responses=ERRORS, summary="List datasets, newest first"
)
def list_datasets(
    session: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> list[DatasetOut]:
    return [DatasetOut.model_validate(d) for d in DatasetStore(session).list(limit, offset)]


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses={**ERRORS, 404: {"description": "no such dataset"}},
    summary="One dataset: its counts, shape, classes and content hash",
)
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetOut:
    dataset = DatasetStore(session).get(dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    return DatasetOut.model_validate(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Remove a dataset (refused while jobs use it; data registered by reference stays)",
    responses={
        **ERRORS,
        404: {"description": "no such dataset"},
        409: {"description": "jobs use the dataset"},
    },
)
async def delete_dataset(
    dataset_id: str, settings: SettingsDep, artifacts: ArtifactsDep
) -> Response:
    def delete(session: Session) -> list[str]:
        # The row goes and, in the same transaction, under the artifact's lock (which an
        # upload of the same bytes takes before it adds its row and writes the file), the
        # file is set aside if no row of any table refers to it any more: neither sees
        # the other half done (app/artifact_release.py).
        store = DatasetStore(session)
        try:
            dataset = store.delete(dataset_id)
        except InUseError as exc:
            raise HTTPException(409, str(exc)) from None
        if dataset is None:
            raise HTTPException(404, f"dataset {dataset_id} not found")
        return [dataset.artifact_path]

    await run_in_threadpool(
        disk_space.releasing_reserve,
        settings.data_dir,
        lambda: change_then_remove_unreferenced(settings, artifacts, delete, lambda paths: paths),
    )
    return Response(status_code=204)
