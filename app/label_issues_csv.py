"""A model's label issues as CSV (``GET /v1/models/{id}/label-issues?format=csv``),
streamed a block of rows at a time.

Columns: ``index`` (the row of the dataset's uploaded ``x_train``), ``file`` (where the
row's image lives, for an image folder registered by reference: an absolute path or an
``s3://`` URI; empty for array data), ``given``, ``given_name``, ``suggested``,
``suggested_name``, ``score`` (1 - p(given label)) and ``flagged`` (``true``/``false``).
A person can fix the ``given`` column of the rows they checked and upload ``index,label``
pairs back (``POST /v1/datasets/{id}/corrections``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import numpy as np
from fastapi.responses import StreamingResponse

from app.artifacts import ArtifactStore
from app.routers import Responses
from app.store import Dataset
from core.dataset_items import train_locations

COLUMNS = (
    "index",
    "file",
    "given",
    "given_name",
    "suggested",
    "suggested_name",
    "score",
    "flagged",
)
ROWS_PER_CHUNK = 2048
CSV_RESPONSE: Responses = {
    200: {
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "format=csv: " + ",".join(COLUMNS) + ", one line per row",
    }
}


def csv_lines(
    arrays: dict[str, np.ndarray], class_names: list[str], locations: list[str] | None
) -> Iterator[bytes]:
    """The header, then ROWS_PER_CHUNK lines at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = zip(
        arrays["index"].tolist(),
        arrays["given"].tolist(),
        arrays["suggested"].tolist(),
        arrays["score"].tolist(),
        arrays["flagged"].tolist(),
        strict=True,
    )
    for count, (index, given, suggested, score, flagged) in enumerate(rows, start=1):
        where = locations[index] if locations is not None and index < len(locations) else ""
        writer.writerow(
            (
                index,
                where,
                given,
                class_names[given],
                suggested,
                class_names[suggested],
                repr(score),
                "true" if flagged else "false",
            )
        )
        if count % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def csv_response(
    model_id: str,
    arrays: dict[str, np.ndarray],
    class_names: list[str],
    dataset: Dataset,
    artifacts: ArtifactStore,
) -> StreamingResponse:
    locations = None
    if dataset.format == "imagefolder":
        manifest = json.loads(artifacts.resolve(dataset.artifact_path).read_text())
        locations = train_locations(manifest)
    return StreamingResponse(
        csv_lines(arrays, class_names, locations),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="label-issues-{model_id}.csv"'},
    )
