"""A corrected dataset: a parent dataset plus corrections (core/corrections.py), stored
as a dataset of its own with its lineage.

What the child stores, so that the worker trains it like any other dataset:

- parent an image folder registered by reference: a manifest of the same files with the
  train split's labels overridden and dropped rows left out (no image is copied or
  read; the files' recorded sizes and stamps are the parent's, so a changed file fails
  the child's jobs as it would the parent's);
- parent array data (an upload, or an ``.npz`` by reference): a canonical ``.npz`` of
  the corrected arrays.

Corrections are checked in full before anything is written (``CorrectionError``: 422
naming the row); the child is then written as an upload is (``store_dataset``).
"""

from __future__ import annotations

import json
from typing import Any

from app.artifacts import ArtifactStore
from app.routers.datasets import store_dataset
from app.schemas import DatasetLineage, DatasetOut
from app.settings import Settings
from app.store import Dataset
from app.uploads import CanonicalDataset
from core.corrections import Corrections, corrected_arrays, corrected_manifest
from core.dataset_files import load_dataset
from core.datastore import content_digest
from core.manifest import open_manifest

MAX_NAME = 255


def store_corrected(
    parent: Dataset,
    corrections: Corrections,
    lineage: DatasetLineage,
    name: str | None,
    settings: Settings,
    artifacts: ArtifactStore,
) -> DatasetOut:
    """Build and store the child of ``parent`` (a detached row: read before, so no
    transaction is held while the child is written). CorrectionError when the
    corrections leave nothing to train on; DatasetError when a file by reference
    changed since the parent was registered."""
    content, suffix, fields = corrected_content(parent, corrections, settings, artifacts)
    return store_dataset(
        settings,
        artifacts,
        content,
        suffix,
        name=name or default_name(parent.name, lineage),
        task=parent.task,
        input_shape=list(parent.input_shape),
        num_classes=parent.num_classes,
        class_names=list(parent.class_names),
        lineage=lineage.model_dump(),
        **fields,
    )


def corrected_content(
    parent: Dataset, corrections: Corrections, settings: Settings, artifacts: ArtifactStore
) -> tuple[bytes, str, dict[str, Any]]:
    """(the child's artifact bytes, its suffix, its format and counts)."""
    path = artifacts.resolve(parent.artifact_path)
    if parent.format == "imagefolder":
        child = corrected_manifest(json.loads(path.read_text()), corrections)
        data = json.dumps(child, sort_keys=True, separators=(",", ":")).encode()
        return data, ".manifest.json", {"format": "imagefolder", **child["counts"]}
    if parent.format == "npz-ref":
        arrays = open_manifest(
            json.loads(path.read_text()), settings.s3_endpoint_url, settings.dataset_root_list
        )
        fmt = "npz"
    else:
        arrays, fmt = load_dataset(path, "npz"), parent.format
    canonical = CanonicalDataset.of(corrected_arrays(arrays, corrections))
    return canonical.to_npz_bytes(), ".npz", {"format": fmt, **canonical.counts}


def default_name(parent_name: str, lineage: DatasetLineage) -> str:
    if lineage.rule == "csv":
        what = f"csv {(lineage.csv_sha256 or '')[:8]}"
    else:
        top = "all flagged" if lineage.top is None else f"top {lineage.top}"
        what = f"{lineage.rule} {top} of model {(lineage.model_id or '')[:8]}"
    suffix = f" ({what})"
    return parent_name[: MAX_NAME - len(suffix)] + suffix


def csv_lineage(parent_id: str, data: bytes, corrections: Corrections) -> DatasetLineage:
    return DatasetLineage(
        parent_dataset_id=parent_id,
        rule="csv",
        csv_sha256=content_digest(data),
        num_relabelled=len(corrections.relabel),
        num_dropped=len(corrections.drop),
    )
