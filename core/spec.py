"""What a training run is: the job spec as pydantic models, and the checks of a spec
against the dataset it will train on.

Torch free (pydantic, plus numpy through core.dataset_files), so the API validates a job
with exactly the rules the worker applies before it trains: the API's request body is
built from these classes, and both call ``check_fits`` with the dataset's facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.dataset_files import DatasetError, validation_rows

TEMPERATURE_GRID = (0.5, 1.0, 1.5, 2.0, 3.0)
LEARNED_TEMPERATURE_START = 1.0

# The worker draws one noise tensor per step (shared: S x (K + R); per example: B x S x
# (K + R), B up to the batch size or the evaluation batch). A spec that would exhaust
# the worker's memory is refused up front rather than killing worker after worker.
MAX_NOISE_BYTES = 2 << 30
EVAL_BATCH_ROWS = 512

# The model's training memory, estimated at submission (``training_bytes``): float32
# parameters four times over (weights, gradients, Adam's two moments) plus the
# activations of one training batch kept for the backward pass (twice: values and
# gradients). A spec above it is refused (422) instead of killing the worker.
MAX_TRAINING_BYTES = 8 << 30
# Floats of activations per input pixel, per image, for the image backbones (summed over
# their conv/batch-norm/ReLU outputs at each stage's resolution; models/backbones.py).
ACTIVATIONS_PER_PIXEL = {"cnn": 200, "resnet18": 200, "resnet50": 700, "resnet18_cifar": 2000}
# Parameters apart from the stem's convolution, output features, and the stem kernel's
# area (the stem's convolution has area x input channels x 64 weights).
IMAGE_BACKBONE = {
    "cnn": (93_000, 128, 9),
    "resnet18": (11_167_104, 512, 49),
    "resnet50": (23_498_624, 2048, 49),
    "resnet18_cifar": (11_167_104, 512, 9),
}
FROZEN_ACTIVATIONS_DIVISOR = 10
PRETRAINED_KINDS = ("resnet18", "resnet50", "resnet18_cifar")  # torchvision's names
# CPU ranks of one job (gloo): more than two only split the same few cores.
MAX_CPU_DEVICES = 2
MAX_DEVICES = 16


def temperature_label(tau: float) -> str:
    """How a grid temperature is named in progress phases and unit folders: "1.5"."""
    return f"{tau:g}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HeadSpec(_Strict):
    kind: Literal["het", "softmax"] = "het"
    num_factors: int = Field(4, ge=0, le=256, description="R, low-rank factors; 0 = diagonal only")
    temperature: float | Literal["auto", "learned"] = Field(
        1.0, description='a fixed tau > 0, "auto" (grid, best validation NLL) or "learned"'
    )
    temperature_grid: list[float] = Field(
        default_factory=lambda: list(TEMPERATURE_GRID), min_length=1, max_length=16
    )
    temperature_bounds: tuple[float, float] = (0.3, 3.0)
    train_mc_samples: int = Field(200, ge=1, le=100_000, description="S while training")
    eval_mc_samples: int = Field(
        512, ge=1, le=100_000, description="S for evaluation and serving (docs/models.md)"
    )
    eval_noise: Literal["qmc", "mc"] = Field(
        "qmc",
        description='evaluation and serving draws: "qmc" randomized Sobol points under 8 '
        "random shifts (at S = 512 more accurate than plain MC at 1000, K = 10 to 1000: "
        'docs/models.md), "mc" independent normals; training always draws plain MC',
    )
    parameter_efficient: bool = False
    share_samples_across_batch: bool = True

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not value > 0:
            raise ValueError("a fixed temperature must be > 0")
        return value

    @field_validator("temperature_bounds")
    @classmethod
    def _ordered_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError("temperature_bounds must be (lo, hi) with 0 < lo < hi")
        return value

    @field_validator("temperature_grid")
    @classmethod
    def _positive_distinct_grid(cls, value: list[float]) -> list[float]:
        if any(not t > 0 for t in value):
            raise ValueError("every grid temperature must be > 0")
        # Each grid value trains a unit named after it ("tau=1.5"): two values with the
        # same name would share a unit.
        labels = [temperature_label(t) for t in value]
        if len(set(labels)) != len(labels):
            raise ValueError(f"grid temperatures must be distinct (as written: {labels})")
        return value

    @model_validator(mode="after")
    def _learned_start_inside_bounds(self) -> HeadSpec:
        lo, hi = self.temperature_bounds
        if self.temperature == "learned" and not lo < LEARNED_TEMPERATURE_START < hi:
            raise ValueError(
                f"a learned temperature starts at {LEARNED_TEMPERATURE_START}, which must lie "
                f"inside temperature_bounds {list(self.temperature_bounds)}"
            )
        return self


class BackboneSpec(_Strict):
    kind: Literal["mlp", "cnn", "resnet18", "resnet50", "resnet18_cifar"] = Field(
        "mlp",
        description="mlp (vectors); cnn, resnet18, resnet50 (torchvision's, ImageNet stem) or "
        "resnet18_cifar (3x3 stem, no max-pool) for images",
    )
    hidden: list[Annotated[int, Field(ge=1, le=16_384)]] = Field(
        default_factory=lambda: [256, 256], max_length=16, description="MLP hidden widths"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    augment: bool = Field(True, description="images only: random crop with padding")
    hflip: bool = Field(False, description="images only: random horizontal flip (wrong for digits)")
    weights: str | None = Field(
        None,
        max_length=4096,
        description="resnet kinds: a state dict the worker reads (torchvision's names; fc.* "
        "ignored): an absolute path, a file:// URI, or a path relative to the worker's "
        "HETSERVE_WEIGHTS_DIR",
    )
    freeze: bool = Field(
        False,
        description="train the head only: the backbone's parameters and batch-norm "
        "statistics stay as loaded",
    )

    @field_validator("weights")
    @classmethod
    def _local_file(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("weights must be null or name a file")
        if "://" in value and not value.startswith("file:///"):
            raise ValueError(
                "weights must be a local file the worker reads: a path or a file:/// URI"
            )
        if "\x00" in value:
            raise ValueError("weights must not contain NUL")
        return value

    @model_validator(mode="after")
    def _weights_for_a_resnet(self) -> BackboneSpec:
        if self.weights is not None and self.kind not in PRETRAINED_KINDS:
            raise ValueError(
                f"weights load into a resnet backbone ({', '.join(PRETRAINED_KINDS)}), "
                f"not {self.kind!r}"
            )
        return self


class TrainSpec(_Strict):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_fraction: float = Field(0.1, gt=0, lt=1, description="used when the dataset has no x_val")
    devices: int = Field(
        1,
        ge=1,
        le=MAX_DEVICES,
        description="data-parallel ranks of this job (DDP): GPUs of one worker on CUDA, at "
        f"most {MAX_CPU_DEVICES} processes on CPU (gloo)",
    )

    @model_validator(mode="after")
    def _cpu_devices(self) -> TrainSpec:
        if self.device == "cpu" and self.devices > MAX_CPU_DEVICES:
            raise ValueError(f"at most {MAX_CPU_DEVICES} devices on CPU (gloo processes)")
        return self


Task = Literal["multiclass", "multilabel"]


class RunParts(_Strict):
    """The parts of a run a client chooses: head, backbone and training budget."""

    head: HeadSpec = Field(default_factory=HeadSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)


class RunSpec(RunParts):
    """One model's training run: the job spec minus what only the service needs."""

    task: Task = "multiclass"

    def with_temperature(self, tau: float) -> RunSpec:
        return self.model_copy(update={"head": self.head.model_copy(update={"temperature": tau})})

    def as_baseline(self) -> RunSpec:
        return self.model_copy(update={"head": HeadSpec(kind="softmax")})

    @property
    def auto_temperature(self) -> bool:
        return self.head.kind == "het" and self.head.temperature == "auto"


# -- a spec against its dataset -------------------------------------------------------


class SpecMismatch(ValueError):
    """The spec is valid on its own but cannot train on this dataset."""


def noise_bytes(spec: RunParts, num_classes: int) -> int:
    """The largest noise draw the head makes in one step, in bytes (float32)."""
    head = spec.head
    if head.kind != "het":
        return 0
    per_draw = (num_classes + head.num_factors) * 4
    rows = 1 if head.share_samples_across_batch else max(spec.train.batch_size, EVAL_BATCH_ROWS)
    return rows * max(head.train_mc_samples, head.eval_mc_samples) * per_draw


def parameter_count(spec: RunParts, input_shape: Sequence[int], num_classes: int) -> int:
    """Parameters of backbone and head (an upper bound for parameter_efficient heads)."""
    if spec.backbone.kind == "mlp":
        width, params = 1, 0
        for dim in input_shape:
            width *= int(dim)
        for hidden in spec.backbone.hidden:
            params += width * hidden + hidden
            width = hidden
        features = width
    else:
        params, features, stem_area = IMAGE_BACKBONE[spec.backbone.kind]
        params += stem_area * int(input_shape[0]) * 64  # the stem follows the input channels
    return params + head_parameter_count(spec, features, num_classes)


def head_parameter_count(spec: RunParts, features: int, num_classes: int) -> int:
    per_class = features + 1
    if spec.head.kind == "het":  # loc, diagonal scale, R factors per class
        per_class *= 2 + spec.head.num_factors
    return per_class * num_classes


def training_bytes(spec: RunParts, input_shape: Sequence[int], num_classes: int) -> int:
    """Estimated memory of training the model: see MAX_TRAINING_BYTES."""
    params = parameter_count(spec, input_shape, num_classes)
    if spec.backbone.kind == "mlp":
        per_row = sum(spec.backbone.hidden) * 2  # linear output and its ReLU
    else:
        pixels = int(input_shape[-1]) * int(input_shape[-2]) if len(input_shape) == 3 else 1
        per_row = ACTIVATIONS_PER_PIXEL[spec.backbone.kind] * pixels
    activations = spec.train.batch_size * per_row * 4 * 2
    if spec.backbone.freeze and spec.backbone.kind != "mlp":
        # Only the head trains: the backbone's weights once, and no activations kept for
        # a backward pass through it (a few layer outputs alive at a time: a tenth).
        head = head_parameter_count(spec, IMAGE_BACKBONE[spec.backbone.kind][1], num_classes)
        return (params - head) * 4 + head * 4 * 4 + activations // FROZEN_ACTIVATIONS_DIVISOR
    return params * 4 * 4 + activations


class DatasetFacts(Protocol):
    """What the checks need to know of a dataset (the store's dataset row has it all).
    Read-only, so a row whose ``input_shape`` is a ``list[int]`` fits."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def input_shape(self) -> Sequence[int]: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def num_train(self) -> int: ...
    @property
    def num_val(self) -> int: ...


def check_fits(spec: RunSpec, dataset: DatasetFacts) -> None:
    """Raise SpecMismatch when ``spec`` cannot train on ``dataset``.

    The API runs it before accepting a job and the worker again before training, so a
    job the API accepted is never refused by the worker for its spec.
    """
    where = f"dataset {dataset.id}"
    if spec.task != dataset.task:
        raise SpecMismatch(f"task {spec.task!r} does not match {where}, which is {dataset.task}")
    images = len(dataset.input_shape) == 3
    if spec.backbone.kind == "mlp" and images:
        raise SpecMismatch(
            f"backbone 'mlp' takes vectors; {where} holds images "
            f"{list(dataset.input_shape)}: use 'cnn' or 'resnet18'"
        )
    if spec.backbone.kind != "mlp" and not images:
        raise SpecMismatch(
            f"backbone {spec.backbone.kind!r} takes images; {where} holds vectors: use 'mlp'"
        )
    if spec.backbone.weights is not None and int(dataset.input_shape[0]) != 3:
        raise SpecMismatch(
            f"pretrained weights take RGB images [3, H, W]; {where} holds "
            f"{list(dataset.input_shape)}: register it without grayscale"
        )
    noise = noise_bytes(spec, dataset.num_classes)
    if noise > MAX_NOISE_BYTES:
        raise SpecMismatch(
            f"the head's noise draw would take {noise / 2**30:.1f} GiB (S x (K + R) numbers"
            f"{'' if spec.head.share_samples_across_batch else ' per example'}; K = "
            f"{dataset.num_classes}); at most {MAX_NOISE_BYTES / 2**30:.0f} GiB: lower "
            "train_mc_samples / eval_mc_samples or share the samples across the batch",
        )
    memory = training_bytes(spec, dataset.input_shape, dataset.num_classes)
    if memory > MAX_TRAINING_BYTES:
        params = parameter_count(spec, dataset.input_shape, dataset.num_classes)
        raise SpecMismatch(
            f"the model would take about {memory / 2**30:.1f} GiB to train ({params:,} "
            f"parameters with gradients and Adam state, plus a batch of "
            f"{spec.train.batch_size} rows of activations); at most "
            f"{MAX_TRAINING_BYTES / 2**30:.0f} GiB: use a smaller backbone.hidden or "
            "train.batch_size"
        )
    if dataset.num_val == 0:
        try:
            validation_rows(dataset.num_train, spec.train.val_fraction)
        except DatasetError as exc:
            raise SpecMismatch(f"{where}: {exc} (see train.val_fraction)") from None


RUN_KEYS = ("task", "head", "backbone", "train")


def validate_run(spec: Mapping[str, Any], dataset: DatasetFacts) -> RunSpec:
    """Everything the worker checks before it trains a stored job spec: the run parts
    parse as a RunSpec and fit the dataset. Raises ValidationError or SpecMismatch."""
    run = RunSpec.model_validate({k: spec[k] for k in RUN_KEYS if k in spec})
    check_fits(run, dataset)
    return run
