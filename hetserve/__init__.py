"""The hetserve Python client: ``from hetserve import Client``.

Talks to a running hetserve service over HTTP (httpx only; numpy for array inputs and
outputs, imported when first used). It never imports the server's packages.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hetserve")
except PackageNotFoundError:  # pragma: no cover - a source tree without an install
    __version__ = "0+unknown"

from hetserve._types import (  # noqa: E402
    TERMINAL_STATUSES,
    Alias,
    ClassPair,
    Dataset,
    DatasetLineage,
    Job,
    JobEvent,
    LabelIssue,
    LabelIssues,
    Model,
    NoiseReport,
    PredictResult,
    Progress,
)
from hetserve.client import Client  # noqa: E402
from hetserve.errors import (  # noqa: E402
    ApiError,
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    HetserveError,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UnprocessableError,
)

__all__ = [
    "TERMINAL_STATUSES",
    "Alias",
    "ApiError",
    "AuthenticationError",
    "ClassPair",
    "Client",
    "ConflictError",
    "ConnectionFailed",
    "Dataset",
    "DatasetLineage",
    "HetserveError",
    "Job",
    "JobEvent",
    "LabelIssue",
    "LabelIssues",
    "Model",
    "NoiseReport",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "PredictResult",
    "Progress",
    "ServiceUnavailable",
    "UnprocessableError",
    "__version__",
]
