"""Export a trained Classifier to one self-contained ONNX file with the MC sampling inside.

The file's contract (docs/export.md has the full version; the names are in
``core.onnx_contract``):

    inputs   input        float32 [B, ...]   raw features; standardisation is in the graph
             num_samples  int64 scalar       S, optional (default: the model's eval S);
                                             <= 0: no sampling (see below)
             seed         int64 scalar       optional; < 0 (the default) = fresh draws
    outputs  ``core.onnx_contract.OUTPUTS``, in that order: name, dtype, shape and
             meaning of each (probs, entropy, ..., noise_free_probs, mc_stderr)

With num_samples <= 0 a HET graph skips the sampler and the MC moments (an ONNX If): the
SAMPLED_OUTPUTS of ``core.onnx_contract`` come back as zeros, the rest exact (the top
classes then ranked by noise_free_probs).

Three parts, one module each:

1. ``models.export.core``: the torch core, features -> latent Gaussian -> MC outputs with
   the noise ``eps`` (S x (K + R), shared by the batch) as a graph input ``noise``,
   computed by the head's reference estimator inside a torch.cond on num_samples > 0
   and exported with dynamo;
2. ``models.export.sampler``: the hand-built ONNX sampler, put inside that If's branch,
   ``seed`` and ``num_samples`` -> ``noise``: randomized Sobol points (the head's
   eval_noise "qmc", the default: a baked-in Sobol table XOR per-call digital shifts
   from SplitMix64, then an inverse normal CDF; models/qmc.py) or independent normals
   ("mc": SplitMix64, then Box-Muller), with numpy twins ``qmc_normals`` and
   ``counter_normals``;
3. ``models.export.parity``: onnxruntime vs PyTorch on held-out inputs, statistically and
   on the same noise.

Checked before the file is written: ``onnx.checker`` (full check) and the parity check;
else ``ExportError``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import onnx

from core.onnx_contract import META_PREFIX, OUTPUT_NAMES, RESERVED_METADATA
from models.classifier import Classifier
from models.export.core import OPSET, core_onnx, het_head, is_sampled, noise_width
from models.export.parity import ParityError, check_parity, parity_rows
from models.export.sampler import (
    counter_normals,
    qmc_normals,
    sampler_nodes,
    sampler_normals,
    with_ignored_sampling_inputs,
    with_sampler,
)

__all__ = [
    "OPSET",
    "OUTPUT_NAMES",
    "ExportError",
    "build_onnx",
    "core_onnx",
    "counter_normals",
    "export_onnx",
    "head_config",
    "noise_width",
    "qmc_normals",
    "sampler_nodes",
    "sampler_normals",
]


class ExportError(Exception):
    """The model could not be exported, or the exported graph failed its checks."""


def build_onnx(model: Classifier, input_shape: list[int]) -> onnx.ModelProto:
    """The full graph: inputs (input, num_samples, seed), outputs OUTPUT_NAMES."""
    core = core_onnx(model, input_shape)
    eval_samples = int(model.head.eval_mc_samples)
    if is_sampled(model):
        return with_sampler(core, noise_width(model), eval_samples, het_head(model).eval_noise)
    return with_ignored_sampling_inputs(core, eval_samples)


def head_config(model: Classifier) -> dict:
    head = model.head
    return {
        "kind": head.kind,
        "num_classes": int(head.num_classes),
        "num_factors": int(head.num_factors),
        "parameter_efficient": bool(head.parameter_efficient),
        "temperature": float(head.temperature),
        "learned_temperature": bool(head.learned_temperature),
        "eval_mc_samples": int(head.eval_mc_samples),
        "eval_noise": getattr(head, "eval_noise", "mc"),
        "share_samples_across_batch": True,
    }


def export_onnx(
    model: Classifier,
    path: str | Path,
    *,
    class_names: list[str],
    parity_inputs: np.ndarray,
    extra_metadata: dict | None = None,
) -> dict:
    """Write ``model`` as a self-contained ONNX file; return the metadata written.

    ``parity_inputs`` (held-out examples, [N, ...]) fix the input shape and feed the
    parity check (its first parity_rows(model) rows: up to 256, fewer for many classes).
    Metadata keys are ``hetserve.<name>`` with JSON values: class_names, input_shape,
    task, head, eval_mc_samples, parity, version, outputs, and ``extra_metadata``'s keys.
    Raises ExportError when a check fails (nothing is written).
    """
    model = copy.deepcopy(model).cpu().eval()  # the caller's model stays where it is
    head = model.head
    parity_inputs = np.ascontiguousarray(parity_inputs, dtype=np.float32)
    if parity_inputs.ndim < 2 or len(parity_inputs) == 0:
        raise ExportError(
            f"parity_inputs must be a non-empty batch [N, ...], got shape {parity_inputs.shape}"
        )
    if len(class_names) != head.num_classes:
        raise ExportError(
            f"{len(class_names)} class names for a model with {head.num_classes} classes"
        )
    input_shape = [int(d) for d in parity_inputs.shape[1:]]
    clashes = sorted(set(extra_metadata or {}) & set(RESERVED_METADATA))
    if clashes:
        raise ExportError(f"extra_metadata may not set {', '.join(clashes)}: export writes those")

    try:
        proto = build_onnx(model, input_shape)
        onnx.checker.check_model(proto, full_check=True)
    except ExportError:
        raise
    except Exception as exc:  # the exporter and checker raise many types
        raise ExportError(f"building the ONNX graph failed: {type(exc).__name__}: {exc}") from exc

    try:
        parity = check_parity(model, proto, parity_inputs[: parity_rows(model)])
    except ParityError as exc:
        raise ExportError(str(exc)) from exc
    metadata = {
        "class_names": list(class_names),
        "input_shape": input_shape,
        "task": head.task,
        "head": head_config(model),
        "eval_mc_samples": int(head.eval_mc_samples),
        "parity": parity,
        "version": importlib.metadata.version("hetserve"),
        "outputs": list(OUTPUT_NAMES),
        **(extra_metadata or {}),
    }
    onnx.helper.set_model_props(
        proto, {META_PREFIX + k: json.dumps(v) for k, v in metadata.items()}
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    onnx.save_model(proto, tmp)
    tmp.replace(path)
    return metadata
