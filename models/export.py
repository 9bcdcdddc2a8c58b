"""Export a trained Classifier to one self-contained ONNX file with the MC sampling inside.

The file's contract (docs/export.md has the full version):

    inputs   input        float32 [B, ...]   raw features; standardisation is in the graph
             num_samples  int64 scalar       S, optional (default: the model's eval S)
             seed         int64 scalar       optional; < 0 (the default) = fresh draws
    outputs  probs             [B, K]   p_hat = 1/S sum_s softmax(u_s / tau)  (sigmoid: multilabel)
             entropy           [B] / [B, K]   H[p_hat] (per label for multilabel)
             expected_entropy  [B] / [B, K]   mean_s H[softmax(u_s / tau)]
             prob_std          [B, K]   per-class std of the sampled probabilities
             noise_std         [B, K]   sqrt(diag Sigma(x)), exact
             top_classes       int64 [B, T]   the T = min(10, K) most probable classes
             top_correlation   [B, T, T]      rho_ij = Sigma_ij / sqrt(Sigma_ii Sigma_jj) among them

The graph is built in two layers:

1. The *core*: torch exports features -> latent Gaussian -> MC moments with the noise
   ``eps`` (S x (K + R), shared by the batch) as a graph input named ``noise``. That same
   graph is the "precomputed noise" baseline of bench/export_speed.py.
2. The *sampler*: a hand-built ONNX subgraph in front of the core that turns ``seed`` and
   ``num_samples`` into ``noise`` with a counter-based generator (SplitMix64 on
   ``key + golden * i``, then Box-Muller). The noise is a pure function of (seed, S, K, R):

   - a caller's seed gives bit-identical outputs across calls, sessions and processes,
     and, because the noise is shared by the batch and drawn independently of it, each
     row's output does not depend on which other rows are batched with it (to float32
     rounding in one batched call, since some onnxruntime kernels round a tensor's tail
     differently; bit for bit one row per call, as app/inference.py runs seeded calls);
   - ``seed < 0`` takes the key from one RandomUniform draw. onnxruntime seeds that node
     from a process-wide clock seed: draws are fresh call after call within a session,
     but two sessions of one process (or processes forked after a session was created)
     repeat each other (onnxruntime#27771). app/inference.py therefore never relies on it:
     it passes a fresh seed from os.urandom on every call, which is fork safe.

Checked before the file is written: ``onnx.checker`` (full check) and parity of
onnxruntime's served estimate against PyTorch's large-S estimate (every probability
within 4 combined MC standard errors, the limit raised for many probabilities so that
good models pass, see check_parity) and exact agreement with PyTorch fed the same noise;
else ``ExportError``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from torch import nn

from models.classifier import Classifier
from models.heads import MULTICLASS, HetHead
from models.onnx_contract import META_PREFIX, OUTPUT_NAMES, RESERVED_METADATA
from models.uncertainty import entropy_of, predictive_uncertainty, top_correlations

OPSET = 18

# Parity, two checks (check_parity):
# 1. statistical: onnxruntime's estimate (its own seeded noise, S = max(eval S,
#    PARITY_MIN_ONNX_SAMPLES)) vs PyTorch at PARITY_TORCH_SAMPLES (independent noise),
#    every probability within z_limit combined MC standard errors, where
#    z_limit = max(PARITY_Z, the Bonferroni bound for PARITY_FAMILY_ALPHA over the N
#    probabilities compared): with thousands of probabilities a fixed 4 would refuse
#    good models (P(|z| > 4) = 6e-5 each, and more at small S, where p_s is skewed).
# 2. same noise: the graph's output vs PyTorch fed counter_normals(seed), which must agree
#    to float32 rounding (PARITY_SAME_NOISE_ATOL): any mistake in the graph shows here.
PARITY_Z = 4.0
PARITY_FAMILY_ALPHA = 1e-3
PARITY_MIN_ONNX_SAMPLES = 4000
PARITY_TORCH_SAMPLES = 10_000
PARITY_SEEDS = (20260, 20261)  # (torch generator, onnx seed): a reproducible check
# float32 rounding of a mean of S probabilities; the z-score is taken against
# sqrt(se_onnx^2 + se_torch^2) + PARITY_ATOL so deterministic entries compare exactly.
PARITY_ATOL = 1e-5
PARITY_SAME_NOISE_ATOL = 1e-4
PARITY_CHUNK_ELEMENTS = 1 << 24  # rows per onnxruntime call: B x S x K at most this
# The first parity_rows(model) of parity_inputs are compared: the check's cost grows with
# rows x S x K (PyTorch at 10 000 draws), so many-class models use fewer rows.
PARITY_MAX_INPUTS = 256
PARITY_MIN_INPUTS = 8
PARITY_MAX_ELEMENTS = 1 << 30

# SplitMix64 (Steele, Lea, Flood 2014): state_i = key + GOLDEN * i, output = mix(state_i).
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


class ExportError(Exception):
    """The model could not be exported, or the exported graph failed its checks."""


# -- 1. the core: torch, noise as an input -------------------------------------


def _scaled(latent, factor: torch.Tensor):
    """The same Gaussian for u * factor (used to fold 1/tau into the (B, K) tensors
    instead of scaling the B x S x K samples)."""

    def times(t):
        return None if t is None else t * factor

    return dataclasses.replace(
        latent,
        mu=latent.mu * factor,
        scale=latent.scale * factor,
        factors=times(latent.factors),
        factor_scale=times(latent.factor_scale),
    )


class SampledCore(nn.Module):
    """forward(input, noise) -> the OUTPUT_NAMES tensors, noise = [eps_K | eps_R] (S, K + R).

    One pass over S (no chunk loop, so batch and S stay dynamic in the graph)::

        z_s      = (mu + V eps_R,s + d * eps_K,s) / tau            (B, S, K)
        p_s      = softmax(z_s)    or sigmoid(z_s) per label
        probs    = mean_s p_s
        prob_std = sqrt( (mean_s p_s^2 - probs^2) * S / (S - 1) )
        expected_entropy = mean_s H[p_s],  H = -sum_k p log p  or  softplus(z) - z sigmoid(z)

    Same estimator as ``HetHead.moments`` (which chunks S to bound memory in torch).
    """

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model
        self.num_classes = model.head.num_classes

    def forward(self, input: torch.Tensor, noise: torch.Tensor):  # noqa: A002 (graph input name)
        head = self.model.head
        h = self.model.features(input)
        latent = head.latent(h)
        k = self.num_classes
        eps_k, eps_r = noise[:, :k], noise[:, k:]
        z = _scaled(latent, 1.0 / head.temperature).sample(
            eps_r if head.num_factors else None, eps_k
        )
        num = torch.ones_like(noise[:, 0]).sum()  # S as a tensor: stays symbolic
        if head.task == MULTICLASS:
            logp = torch.log_softmax(z, -1)
            p = logp.exp()
            expected_entropy = -(p * logp).sum(-1).mean(1)
        else:
            p = torch.sigmoid(z)
            expected_entropy = (nn.functional.softplus(z) - z * p).mean(1)
        probs = p.mean(1)
        var = ((p * p).mean(1) - probs * probs).clamp_min(0) * (num / (num - 1).clamp_min(1))
        return _outputs(latent, probs, expected_entropy, var.sqrt(), head.task)


class DeterministicCore(nn.Module):
    """forward(input) -> the OUTPUT_NAMES tensors for the linear baseline head: exact
    values, zeros where a quantity does not exist (prob_std, noise_std, correlations)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor):  # noqa: A002
        head = self.model.head
        h = self.model.features(input)
        m = head.moments(h)
        return _outputs(head.latent(h), m["probs"], m["expected_entropy"], m["prob_std"], head.task)


def _outputs(latent, probs, expected_entropy, prob_std, task):
    classes, rho = top_correlations(latent, probs)
    return (
        probs,
        entropy_of(probs, task),
        expected_entropy,
        prob_std,
        latent.variance().sqrt(),
        classes,
        rho,
    )


def is_sampled(model: Classifier) -> bool:
    return isinstance(model.head, HetHead)


def noise_width(model: Classifier) -> int:
    """K + R: the columns of the shared noise matrix."""
    return model.head.num_classes + model.head.num_factors


def core_onnx(model: Classifier, input_shape: list[int]) -> onnx.ModelProto:
    """The torch-exported core of a CPU model. HET: inputs (input, noise); baseline: (input)."""
    model.eval()
    x = torch.zeros([3, *input_shape])
    batch = torch.export.Dim("batch")
    if is_sampled(model):
        core: nn.Module = SampledCore(model)
        args = (x, torch.zeros(5, noise_width(model)))
        dynamic = {"input": {0: batch}, "noise": {0: torch.export.Dim("samples")}}
        input_names = ["input", "noise"]
    else:
        core = DeterministicCore(model)
        args = (x,)
        dynamic = {"input": {0: batch}}
        input_names = ["input"]
    core.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            core,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


# -- 2. the sampler: seed, num_samples -> noise ----------------------------------


def _const(name: str, value, dtype) -> onnx.NodeProto:
    return oh.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
    )


def _mix64_nodes(x: str, out: str, tag: str) -> list[onnx.NodeProto]:
    """SplitMix64's finaliser on uint64 tensors (wrapping multiplication)::

    z = (x ^ (x >> 30)) * MIX1;  z = (z ^ (z >> 27)) * MIX2;  out = z ^ (z >> 31)
    """
    nodes, z = [], x
    for step, (shift, factor) in enumerate(
        (("c_u30", "c_mix1"), ("c_u27", "c_mix2"), ("c_u31", None))
    ):
        shifted, mixed = f"{tag}_shift{step}", f"{tag}_xor{step}"
        nodes += [
            oh.make_node("BitShift", [z, shift], [shifted], direction="RIGHT"),
            oh.make_node("BitwiseXor", [z, shifted], [mixed if factor else out]),
        ]
        if factor:
            z = f"{tag}_mul{step}"
            nodes.append(oh.make_node("Mul", [mixed, factor], [z]))
    return nodes


def sampler_nodes(width: int) -> list[onnx.NodeProto]:
    """The sampler's nodes, every internal tensor name under "sampler/" (no clash with the core)."""
    nodes = _sampler_nodes(width)
    own = {o for n in nodes for o in n.output} - {"noise"}
    for n in nodes:
        n.input[:] = [f"sampler/{i}" if i in own else i for i in n.input]
        n.output[:] = [f"sampler/{o}" if o in own else o for o in n.output]
        n.name = n.output[0]
    return nodes


def _sampler_nodes(width: int) -> list[onnx.NodeProto]:
    """Nodes computing ``noise`` (S, width) float32 from the graph inputs ``seed``, ``num_samples``.

    Counter-based: pair j = s * H + c (H = ceil(width / 2)) gives one 64-bit word
    w_j = mix(key + GOLDEN * (j + 1)), two 24-bit uniforms
    u1 = (w_j >> 40 + 1/2) / 2^24 in (0, 1) and u2 = (w_j & (2^24 - 1)) / 2^24,
    and by Box-Muller two normals r cos(2 pi u2) in column c and r sin(2 pi u2) in
    column H + c, r = sqrt(-2 log u1). Row s depends on (key, s) only, so a larger S
    extends a smaller S's draws (up to the last bit: onnxruntime's Log, Cos and Sin round
    a tensor's tail elements differently). key = mix(seed), or mix(a RandomUniform draw)
    when seed < 0.
    """
    half = (width + 1) // 2
    u64 = np.uint64
    nodes = [
        _const("c_u30", 30, u64),
        _const("c_u27", 27, u64),
        _const("c_u31", 31, u64),
        _const("c_u40", 40, u64),
        _const("c_mask24", (1 << 24) - 1, u64),
        _const("c_mix1", MIX1, u64),
        _const("c_mix2", MIX2, u64),
        _const("c_golden", GOLDEN, u64),
        _const("c_half", half, np.int64),
        _const("c_half_1d", [half], np.int64),
        _const("c_one", 1, np.int64),
        _const("c_zero", 0, np.int64),
        _const("c_shape_1", [1], np.int64),
        _const("c_inv24", 2.0**-24, np.float32),
        _const("c_half_f", 0.5, np.float32),
        _const("c_minus2", -2.0, np.float32),
        _const("c_two_pi_inv24", 2 * math.pi * 2.0**-24, np.float32),
        # key: the caller's seed, or 53 random bits when seed < 0
        oh.make_node("Less", ["seed", "c_zero"], ["fresh"]),
        oh.make_node(
            "RandomUniform",
            [],
            ["fresh_f"],
            dtype=TensorProto.DOUBLE,
            shape=[1],
            low=0.0,
            high=2.0**53,
        ),
        oh.make_node("Floor", ["fresh_f"], ["fresh_floor"]),
        oh.make_node("Cast", ["fresh_floor"], ["fresh_key"], to=TensorProto.INT64),
        oh.make_node("Where", ["fresh", "fresh_key", "seed"], ["key_i"]),
        oh.make_node("Cast", ["key_i"], ["key_raw"], to=TensorProto.UINT64),
        *_mix64_nodes("key_raw", "key", "k"),
        # counters j + 1 for j in [0, S * H)
        oh.make_node("Mul", ["num_samples", "c_half"], ["num_pairs"]),
        oh.make_node("Add", ["num_pairs", "c_one"], ["num_pairs_1"]),
        oh.make_node("Range", ["c_one", "num_pairs_1", "c_one"], ["counter_i"]),
        oh.make_node("Cast", ["counter_i"], ["counter"], to=TensorProto.UINT64),
        oh.make_node("Mul", ["counter", "c_golden"], ["stride"]),
        oh.make_node("Add", ["stride", "key"], ["state"]),
        *_mix64_nodes("state", "word", "w"),
        # two 24-bit uniforms per word
        oh.make_node("BitShift", ["word", "c_u40"], ["hi"], direction="RIGHT"),
        oh.make_node("BitwiseAnd", ["word", "c_mask24"], ["lo"]),
        oh.make_node("Cast", ["hi"], ["hi_f"], to=TensorProto.FLOAT),
        oh.make_node("Cast", ["lo"], ["lo_f"], to=TensorProto.FLOAT),
        oh.make_node("Add", ["hi_f", "c_half_f"], ["hi_c"]),
        oh.make_node("Mul", ["hi_c", "c_inv24"], ["u1"]),
        # Box-Muller
        oh.make_node("Log", ["u1"], ["log_u1"]),
        oh.make_node("Mul", ["log_u1", "c_minus2"], ["r2"]),
        oh.make_node("Sqrt", ["r2"], ["radius"]),
        oh.make_node("Mul", ["lo_f", "c_two_pi_inv24"], ["angle"]),  # 2 pi u2
        oh.make_node("Cos", ["angle"], ["cos"]),
        oh.make_node("Sin", ["angle"], ["sin"]),
        oh.make_node("Mul", ["radius", "cos"], ["normal_a"]),
        oh.make_node("Mul", ["radius", "sin"], ["normal_b"]),
        oh.make_node("Reshape", ["num_samples", "c_shape_1"], ["num_samples_1d"]),
        oh.make_node("Concat", ["num_samples_1d", "c_half_1d"], ["pair_shape"], axis=0),
        oh.make_node("Reshape", ["normal_a", "pair_shape"], ["normal_a2"]),
        oh.make_node("Reshape", ["normal_b", "pair_shape"], ["normal_b2"]),
    ]
    if width % 2 == 0:
        nodes.append(oh.make_node("Concat", ["normal_a2", "normal_b2"], ["noise"], axis=1))
    else:
        nodes += [
            oh.make_node("Concat", ["normal_a2", "normal_b2"], ["noise_even"], axis=1),
            _const("c_slice_start", [0], np.int64),
            _const("c_slice_stop", [width], np.int64),
            _const("c_slice_axis", [1], np.int64),
            oh.make_node(
                "Slice", ["noise_even", "c_slice_start", "c_slice_stop", "c_slice_axis"], ["noise"]
            ),
        ]
    return nodes


def counter_normals(seed: int, num_samples: int, width: int) -> np.ndarray:
    """The sampler's noise for a seed >= 0, in numpy: the (S, width) float32 matrix the
    graph feeds its core (same integer arithmetic; float ops may differ in the last bit)."""
    half = (width + 1) // 2
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)

    def mix(x):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(MIX1)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(MIX2)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        key = mix(np.uint64(seed) & mask)
        counter = np.arange(1, num_samples * half + 1, dtype=np.uint64)
        word = mix(counter * np.uint64(GOLDEN) + key)
    u1 = ((word >> np.uint64(40)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    low = (word & np.uint64((1 << 24) - 1)).astype(np.float32)
    radius = np.sqrt(np.log(u1) * np.float32(-2.0))
    angle = low * np.float32(2 * math.pi * 2.0**-24)
    a = (radius * np.cos(angle)).reshape(num_samples, half)
    b = (radius * np.sin(angle)).reshape(num_samples, half)
    return np.concatenate([a, b], axis=1)[:, :width]


def with_sampler(core: onnx.ModelProto, width: int, eval_samples: int) -> onnx.ModelProto:
    """Replace the core's ``noise`` input by the sampler; add inputs num_samples, seed
    (initializers of the same name give their defaults: eval S, and -1 = fresh draws)."""
    graph = core.graph
    inputs = [i for i in graph.input if i.name != "noise"]
    defaults = [
        numpy_helper.from_array(np.asarray(eval_samples, dtype=np.int64), "num_samples"),
        numpy_helper.from_array(np.asarray(-1, dtype=np.int64), "seed"),
    ]
    inputs += [oh.make_tensor_value_info(d.name, TensorProto.INT64, []) for d in defaults]
    merged = oh.make_graph(
        [*sampler_nodes(width), *graph.node],
        graph.name,
        inputs,
        list(graph.output),
        [*graph.initializer, *defaults],
        value_info=list(graph.value_info),
    )
    model = oh.make_model(
        merged,
        opset_imports=list(core.opset_import),
        functions=list(core.functions),
        ir_version=core.ir_version,
        producer_name="hetserve",
    )
    return model


def with_ignored_sampling_inputs(core: onnx.ModelProto, eval_samples: int) -> onnx.ModelProto:
    """The baseline takes num_samples and seed too (ignored) so clients call both alike."""
    graph = core.graph
    defaults = [
        numpy_helper.from_array(np.asarray(eval_samples, dtype=np.int64), "num_samples"),
        numpy_helper.from_array(np.asarray(-1, dtype=np.int64), "seed"),
    ]
    graph.input.extend(oh.make_tensor_value_info(d.name, TensorProto.INT64, []) for d in defaults)
    graph.initializer.extend(defaults)
    core.producer_name = "hetserve"
    return core


# -- 3. export: build, check, compare, write -------------------------------------


def build_onnx(model: Classifier, input_shape: list[int]) -> onnx.ModelProto:
    """The full graph: inputs (input, num_samples, seed), outputs OUTPUT_NAMES."""
    core = core_onnx(model, input_shape)
    eval_samples = int(model.head.eval_mc_samples)
    if is_sampled(model):
        return with_sampler(core, noise_width(model), eval_samples)
    return with_ignored_sampling_inputs(core, eval_samples)


def head_config(model: Classifier) -> dict:
    head = model.head
    return {
        "kind": "het" if is_sampled(model) else "softmax",
        "num_classes": int(head.num_classes),
        "num_factors": int(head.num_factors),
        "parameter_efficient": bool(head.parameter_efficient),
        "temperature": float(head.temperature),
        "learned_temperature": bool(head.learned_temperature),
        "eval_mc_samples": int(head.eval_mc_samples),
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
    task, head, eval_mc_samples, parity, version, outputs, and ``extra_metadata``'s keys. Raises ExportError when a check fails (nothing is written).
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

    parity = check_parity(model, proto, parity_inputs[: parity_rows(model)])
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


def parity_rows(model: Classifier) -> int:
    """How many parity inputs to use: at most PARITY_MAX_INPUTS, and fewer for many
    classes so that the check stays within PARITY_MAX_ELEMENTS rows x S x K per side."""
    head = model.head
    per_row = (
        max(PARITY_TORCH_SAMPLES, PARITY_MIN_ONNX_SAMPLES, int(head.eval_mc_samples))
        * head.num_classes
    )
    return max(PARITY_MIN_INPUTS, min(PARITY_MAX_INPUTS, PARITY_MAX_ELEMENTS // per_row))


def check_parity(model: Classifier, proto: onnx.ModelProto, x: np.ndarray) -> dict:
    """onnxruntime vs PyTorch on held-out inputs x; returns the figures, or raises ExportError.

    Statistical check, independent noise on each side::

        z = |p_onnx - p_torch| / (sqrt(se_onnx^2 + se_torch^2) + PARITY_ATOL),  se = prob_std / sqrt(S)
        max z <= z_limit = max(PARITY_Z, Phi^-1(1 - PARITY_FAMILY_ALPHA / (2 N)))

    Same-noise check: max |p_onnx(seed) - p_torch(counter_normals(seed))| <= PARITY_SAME_NOISE_ATOL.
    """
    import onnxruntime as ort  # the training side has it; imported here, where it is used

    head = model.head
    torch_seed, onnx_seed = PARITY_SEEDS
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )

    def run_onnx(num_samples: int) -> dict[str, np.ndarray]:
        rows = max(1, PARITY_CHUNK_ELEMENTS // (num_samples * head.num_classes))
        feeds = {
            "num_samples": np.asarray(num_samples, np.int64),
            "seed": np.asarray(onnx_seed, np.int64),
        }
        parts = [
            session.run(["probs", "prob_std"], {"input": x[i : i + rows], **feeds})
            for i in range(0, len(x), rows)
        ]
        return {
            "probs": np.concatenate([p[0] for p in parts]),
            "prob_std": np.concatenate([p[1] for p in parts]),
        }

    sampled = is_sampled(model)
    onnx_samples = max(int(head.eval_mc_samples), PARITY_MIN_ONNX_SAMPLES) if sampled else 1
    torch_samples = PARITY_TORCH_SAMPLES if sampled else 1
    got = run_onnx(onnx_samples)
    with torch.no_grad():
        h = model.features(torch.from_numpy(x))
        ref = predictive_uncertainty(
            head, h, torch_samples, torch.Generator().manual_seed(torch_seed)
        )
    p_onnx, p_ref = got["probs"].astype(np.float64), ref["probs"].double().numpy()
    se_onnx = got["prob_std"].astype(np.float64) / math.sqrt(onnx_samples)
    se_ref = ref["mc_stderr"].double().numpy()
    z = np.abs(p_onnx - p_ref) / (np.sqrt(se_onnx**2 + se_ref**2) + PARITY_ATOL)
    z_limit = max(PARITY_Z, NormalDist().inv_cdf(1 - PARITY_FAMILY_ALPHA / (2 * z.size)))

    same_samples = int(head.eval_mc_samples) if sampled else 1
    same = run_onnx(same_samples)["probs"]
    with torch.no_grad():
        noise = None
        if sampled:
            eps = torch.from_numpy(counter_normals(onnx_seed, same_samples, noise_width(model)))
            noise = (eps[:, head.num_classes :], eps[:, : head.num_classes])
        same_ref = head.moments(h, same_samples, noise=noise)["probs"].numpy()
    same_diff = float(np.abs(same - same_ref).max())

    figures = {
        "num_inputs": int(len(x)),
        "num_probabilities": int(z.size),
        "onnx_samples": onnx_samples,
        "torch_samples": torch_samples,
        "z_limit": round(z_limit, 4),
        "max_z": float(z.max()),
        "mean_z": float(z.mean()),
        "max_abs_diff": float(np.abs(p_onnx - p_ref).max()),
        "same_noise_samples": same_samples,
        "same_noise_max_abs_diff": same_diff,
        "passed": bool(z.max() <= z_limit and same_diff <= PARITY_SAME_NOISE_ATOL),
    }
    if not z.max() <= z_limit:  # NaN fails too
        row, cls = (int(i) for i in np.unravel_index(int(np.argmax(z)), z.shape))
        raise ExportError(
            f"parity check failed: onnxruntime p={p_onnx[row, cls]:.6f} vs PyTorch p={p_ref[row, cls]:.6f} "
            f"for input {row}, class {cls}: {figures['max_z']:.1f} combined MC standard errors apart "
            f"(limit {z_limit:.2f}; S={onnx_samples} vs {torch_samples}); figures: {figures}"
        )
    if not same_diff <= PARITY_SAME_NOISE_ATOL:
        raise ExportError(
            f"parity check failed: with the same noise, onnxruntime and PyTorch probabilities differ by "
            f"up to {same_diff:.2e} (limit {PARITY_SAME_NOISE_ATOL:.0e}); figures: {figures}"
        )
    return figures
