"""Typed answers of the hetserve HTTP API (TypedDicts: they are the API's JSON objects,
so ``dict`` code keeps working and type checkers know the keys)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:  # numpy is optional for the client: imported on first use
    from numpy.typing import NDArray

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Predictive = Literal["marginal", "noise_free"]


class DatasetLineage(TypedDict, total=False):
    """Where a corrected dataset came from."""

    parent_dataset_id: str
    rule: str  # "relabel" or "drop" (a model's top N flagged rows), or "csv"
    model_id: str | None
    top: int | None
    csv_sha256: str | None
    num_relabelled: int
    num_dropped: int


class Dataset(TypedDict, total=False):
    id: str
    name: str
    format: str
    task: str
    num_train: int
    num_val: int
    num_test: int
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    sha256: str
    size_bytes: int
    created_at: str
    lineage: DatasetLineage | None  # a corrected dataset's parent and corrections


class Progress(TypedDict, total=False):
    epoch: int
    epochs: int
    fraction: float
    phase: str | None  # "model", "baseline", or a temperature sweep unit such as "tau=1.5"


class Job(TypedDict, total=False):
    id: str
    dataset_id: str
    status: JobStatusName
    spec: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    model_id: str | None
    baseline_model_id: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None


class Model(TypedDict, total=False):
    id: str
    job_id: str
    role: str
    head: str
    task: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    metrics: dict[str, Any]
    baseline_metrics: dict[str, Any] | None
    baseline_model_id: str | None
    onnx_sha256: str
    created_at: str


class Alias(TypedDict):
    name: str
    model_id: str
    updated_at: str


class ClassPair(TypedDict):
    classes: list[int]
    class_names: list[str]
    flip_rate: float
    correlation: float


class NoiseReport(TypedDict, total=False):
    """The model's label-noise report over its training inputs."""

    model_id: str
    num_examples: int
    class_pairs: list[ClassPair]  # most confused first
    flip_matrix: list[list[float]] | None  # K×K, or None when K is large
    noise_std_by_class: list[float]


class LabelIssue(TypedDict):
    index: int  # row of the uploaded x_train
    given_label: int
    given_name: str
    suggested_label: int
    suggested_name: str
    score: float  # 1 - p(given label)
    flagged: bool  # in the flagged set


class LabelIssues(TypedDict, total=False):
    model_id: str
    dataset_id: str
    num_examples: int
    num_flagged: int
    num_matching: int  # rows that match the filters
    offset: int
    issues: list[LabelIssue]  # most likely mislabeled first


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of ``GET /v1/jobs/{id}/events``: ``event`` is ``"progress"``
    (``job`` holds id, status, progress, attempts) or ``"end"`` (``job`` is the whole job)."""

    event: str
    job: Job


@dataclass
class PredictResult:
    """``POST /v1/models/{id}/predict``'s answer.

    ``rows`` are the per-row dicts exactly as the API sent them; the array properties
    (``probs``, ``labels``, ``confidence``, ``entropy``, ``expected_entropy``,
    ``prob_std``, ``mc_stderr``, ``noise_std``) stack a field over the rows as a numpy
    array (numpy is imported on first use). A field the API left null (the sampled-only
    fields of the noise-free predictive; mc_stderr at S = 1, where it is undefined) gives
    an array of NaN.
    """

    model_id: str
    mc_samples: int
    predictive: str | None
    rows: list[dict[str, Any]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def array(self, name: str) -> NDArray[Any]:
        """Field ``name`` of every row as one numpy array (NaN where the API sent null)."""
        np = _numpy()
        values = [row.get(name) for row in self.rows]
        out: NDArray[Any]
        if all(v is None for v in values):
            out = np.full(len(values), np.nan)
            return out
        if any(v is None for v in values):
            shape = np.shape(next(v for v in values if v is not None))
            values = [np.full(shape, np.nan) if v is None else v for v in values]
        out = np.asarray(values, dtype=np.int64 if name == "label" else np.float64)
        return out

    @property
    def probs(self) -> NDArray[Any]:
        """[N, K] predictive probabilities."""
        return self.array("probs")

    @property
    def labels(self) -> NDArray[Any]:
        """[N] argmax class per row."""
        return self.array("label")

    @property
    def class_names(self) -> list[str | None]:
        """[N] the class name per row (None where a row has none)."""
        return [row.get("class_name") for row in self.rows]

    @property
    def confidence(self) -> NDArray[Any]:
        return self.array("confidence")

    @property
    def entropy(self) -> NDArray[Any]:
        return self.array("entropy")

    @property
    def expected_entropy(self) -> NDArray[Any]:
        return self.array("expected_entropy")

    @property
    def prob_std(self) -> NDArray[Any]:
        return self.array("prob_std")

    @property
    def mc_stderr(self) -> NDArray[Any]:
        return self.array("mc_stderr")

    @property
    def noise_std(self) -> NDArray[Any]:
        return self.array("noise_std")


def _numpy() -> ModuleType:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional for the client
        raise ImportError(
            "numpy is needed for PredictResult's arrays (pip install numpy); "
            "PredictResult.rows holds the same values as plain lists"
        ) from None
    return numpy
