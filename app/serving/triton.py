"""A served model's tensors as Triton and the Open Inference Protocol name them, and the
Triton model repository (``config.pbtxt`` + ``1/model.onnx``) for its ONNX file.

Torch free and protobuf free: ``config.pbtxt`` is written as text (tests parse it back
with the ModelConfig protobuf that tritonclient ships).

    inputs, outputs = signature(model.session)
    text = config_pbtxt("mymodel", inputs, outputs)            # max_batch_size: 0
    text = config_pbtxt("mymodel", inputs, outputs, max_batch_size=64)

Why two shapes of config. The graph's ``num_samples`` and ``seed`` are rank-0 tensors,
one per call (the noise is drawn once per call and shared by its rows); onnxruntime lists
them as overridable initializers, not inputs. Triton's onnxruntime backend accepts such
an initializer as an ``optional: true`` input with ``dims: [ 1 ]`` (it hands the graph a
rank-0 tensor because the model declares one), but refuses any optional input when
``max_batch_size > 0`` ("optional input ... is not supported for models that support
batching"), and a per-request scalar could not be batched anyway. So:

- ``max_batch_size: 0`` (the default): no Triton batching; ``input`` is declared with its
  batch dimension (``[ -1, ... ]``) and ``num_samples`` / ``seed`` are optional INT64
  inputs of dims ``[ 1 ]``: a client picks S and a seed per request, as with hetserve.
- ``max_batch_size: N > 0``: ``dynamic_batching { }``, batch dimension implicit (a
  per-row scalar output such as multiclass ``entropy``, ``[batch]`` in the graph, is
  ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``: Triton answers it as ``[batch, 1]``),
  and only ``input`` declared: every call uses the file's defaults (the model's eval S, fresh
  draws from the graph's own random node; onnxruntime seeds those from one process-wide
  clock seed, so several instances of the model in one Triton process may repeat each
  other's draws: keep ``instance_group`` at count 1 per process if that matters).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

# onnxruntime's type strings -> the protocol's datatypes (Triton's are "TYPE_" + these).
ORT_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}

PLATFORM = "onnxruntime_onnx"
MODEL_VERSION = "1"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # "FP32", "INT64", ...
    shape: tuple[int, ...]  # -1 where the graph's dimension is dynamic (the batch)
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        """The protocol's tensor metadata object."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any, optional: bool = False) -> TensorSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ValueError(f"tensor {arg.name!r} has a type Triton does not take: {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape, optional)


def signature(session: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an onnxruntime session: the graph's inputs, then its
    overridable initializers (``num_samples``, ``seed``) as optional inputs."""
    inputs = [_spec(a) for a in session.get_inputs()]
    inputs += [_spec(a, optional=True) for a in session.get_overridable_initializers()]
    return inputs, [_spec(o) for o in session.get_outputs()]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(spec: TensorSpec, dims: tuple[int, ...], scalar_rows: bool) -> list[str]:
    lines = [
        "  {",
        f"    name: {_quote(spec.name)}",
        f"    data_type: TYPE_{spec.datatype}",
        f"    dims: [ {', '.join(map(str, dims))} ]",
    ]
    if scalar_rows:  # the graph's [batch]: Triton's [batch, 1], reshaped to [batch]
        lines.append("    reshape: { shape: [ ] }")
    if spec.optional:
        lines.append("    optional: true")
    lines.append("  }")
    return lines


def _section(key: str, blocks: list[list[str]]) -> list[str]:
    lines = [f"{key} ["]
    for i, block in enumerate(blocks):
        lines += block[:-1] + [block[-1] + ("," if i < len(blocks) - 1 else "")]
    return lines + ["]"]


def config_pbtxt(
    name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int = 0
) -> str:
    """Triton's model configuration for the onnxruntime backend (module docstring)."""
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size must be >= 0, got {max_batch_size}")

    def block(spec: TensorSpec) -> list[str]:
        if max_batch_size == 0:
            # a rank-0 tensor is declared dims [ 1 ]: the backend hands the graph a scalar
            return _tensor_block(spec, spec.shape or (1,), scalar_rows=False)
        if not spec.shape or spec.shape[0] != -1:
            raise ValueError(f"tensor {spec.name!r} has no batch dimension: {spec.shape}")
        return _tensor_block(spec, spec.shape[1:] or (1,), scalar_rows=len(spec.shape) == 1)

    declared = [s for s in inputs if max_batch_size == 0 or not s.optional]
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORM)}",
        f"max_batch_size: {max_batch_size}",
        *_section("input", [block(s) for s in declared]),
        *_section("output", [block(s) for s in outputs]),
    ]
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def repository_zip(name: str, config: str, onnx_bytes: bytes) -> bytes:
    """A model repository holding one model: ``<name>/config.pbtxt`` and
    ``<name>/1/model.onnx`` (the ONNX file's bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/config.pbtxt", config)
        archive.writestr(f"{name}/{MODEL_VERSION}/{MODEL_FILE}", onnx_bytes)
    return buffer.getvalue()
