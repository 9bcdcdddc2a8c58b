"""The sampler of the core: graph inputs ``seed`` and ``num_samples`` -> ``noise``.

A hand-built ONNX subgraph turns ``seed`` and ``num_samples`` into the (S, K + R) noise
matrix the core (``models.export.core``) takes (it runs inside the core's If on
num_samples > 0, so S = 0 draws nothing), in one of two modes, the head's eval_noise:

- "qmc" (the default): randomized Sobol points (``models.qmc``): a baked-in table of N
  Sobol points XOR per-call digital shifts, whose digits are SplitMix64 words of
  ``key + golden * i``, then an inverse normal CDF (AS241 PPND7) from elementary ops;
- "mc": independent normals, SplitMix64 on ``key + golden * i``, then Box-Muller.

Either way the noise is a pure function of (seed, S, K, R):

- a caller's seed gives bit-identical outputs across calls, sessions and processes,
  and, because the noise is shared by the batch and drawn independently of it, each
  row's output does not depend on which other rows are batched with it (to float32
  rounding in one batched call, since some onnxruntime kernels round a tensor's tail
  differently; bit for bit one row per call, as app/serving/onnx_model.py runs seeded calls);
- ``seed < 0`` takes the key from one RandomUniform draw. onnxruntime seeds that node
  from a process-wide clock seed: draws are fresh call after call within a session,
  but two sessions of one process (or processes forked after a session was created)
  repeat each other (onnxruntime#27771). app/serving/onnx_model.py therefore never relies on it:
  it passes a fresh seed from os.urandom on every call, which is fork safe.

``qmc_normals`` and ``counter_normals`` are the same generators in numpy (``sampler_normals``
picks one by mode), the twins the parity check and the tests feed to PyTorch.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from models import qmc

# SplitMix64 (Steele, Lea, Flood 2014): state_i = key + GOLDEN * i, output = mix(state_i).
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


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


def _key_nodes() -> list[onnx.NodeProto]:
    """``key`` (uint64) = mix(seed), or mix(53 random bits from RandomUniform) when seed < 0."""
    return [
        _const("c_u30", 30, np.uint64),
        _const("c_u27", 27, np.uint64),
        _const("c_u31", 31, np.uint64),
        _const("c_mix1", MIX1, np.uint64),
        _const("c_mix2", MIX2, np.uint64),
        _const("c_zero", 0, np.int64),
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
    ]


def sampler_nodes(width: int, mode: str = "qmc") -> list[onnx.NodeProto]:
    """The sampler's nodes, every internal tensor name under "sampler/" (no clash with the
    core). mode "qmc": randomized Sobol normals (``qmc_normals``); "mc": independent
    normals (``counter_normals``)."""
    if mode == "qmc":
        nodes = _qmc_sampler_nodes(width)
    elif mode == "mc":
        nodes = _sampler_nodes(width)
    else:
        raise ValueError(f'sampler mode must be "qmc" or "mc", got {mode!r}')
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
        _const("c_u40", 40, u64),
        _const("c_mask24", (1 << 24) - 1, u64),
        _const("c_golden", GOLDEN, u64),
        _const("c_half", half, np.int64),
        _const("c_half_1d", [half], np.int64),
        _const("c_one", 1, np.int64),
        _const("c_shape_1", [1], np.int64),
        _const("c_inv24", 2.0**-24, np.float32),
        _const("c_half_f", 0.5, np.float32),
        _const("c_minus2", -2.0, np.float32),
        _const("c_two_pi_inv24", 2 * math.pi * 2.0**-24, np.float32),
        *_key_nodes(),
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


def _horner_nodes(x: str, coefs, out: str, tag: str) -> list[onnx.NodeProto]:
    """out = ((c0 x + c1) x + ...) x + c_last: qmc.horner's operations, in order."""
    nodes = [_const(f"{tag}_c{i}", c, np.float32) for i, c in enumerate(coefs)]
    acc = f"{tag}_x0"
    nodes.append(oh.make_node("Mul", [f"{tag}_c0", x], [acc]))
    for i in range(1, len(coefs) - 1):
        nodes += [
            oh.make_node("Add", [acc, f"{tag}_c{i}"], [f"{tag}_add{i}"]),
            oh.make_node("Mul", [f"{tag}_add{i}", x], [f"{tag}_x{i}"]),
        ]
        acc = f"{tag}_x{i}"
    nodes.append(oh.make_node("Add", [acc, f"{tag}_c{len(coefs) - 1}"], [out]))
    return nodes


def _normal_quantile_nodes(u: str, out: str) -> list[onnx.NodeProto]:
    """Phi^-1(u) by AS241 PPND7: qmc.normal_quantile's operations, in order."""
    return [
        _const("c_q_half", 0.5, np.float32),
        _const("c_q_one", 1.0, np.float32),
        _const("c_q_r0", 0.180625, np.float32),
        _const("c_q_t0", 1.6, np.float32),
        _const("c_q_central", qmc.PPND7_CENTRAL, np.float32),
        oh.make_node("Sub", [u, "c_q_half"], ["q"]),
        oh.make_node("Mul", ["q", "q"], ["q2"]),
        oh.make_node("Sub", ["c_q_r0", "q2"], ["r"]),
        *_horner_nodes("r", qmc.PPND7_A, "central_num", "ha"),
        *_horner_nodes("r", qmc.PPND7_B, "central_den", "hb"),
        oh.make_node("Mul", ["q", "central_num"], ["central_num_q"]),
        oh.make_node("Div", ["central_num_q", "central_den"], ["central"]),
        oh.make_node("Sub", ["c_q_one", u], ["one_minus_u"]),
        oh.make_node("Min", [u, "one_minus_u"], ["tail_p"]),
        oh.make_node("Log", ["tail_p"], ["log_tail_p"]),
        oh.make_node("Neg", ["log_tail_p"], ["neg_log_tail_p"]),
        oh.make_node("Sqrt", ["neg_log_tail_p"], ["t_raw"]),
        oh.make_node("Sub", ["t_raw", "c_q_t0"], ["t"]),
        *_horner_nodes("t", qmc.PPND7_C, "tail_num", "hc"),
        *_horner_nodes("t", qmc.PPND7_D, "tail_den", "hd"),
        oh.make_node("Div", ["tail_num", "tail_den"], ["tail_abs"]),
        oh.make_node("Sign", ["q"], ["q_sign"]),
        oh.make_node("Mul", ["tail_abs", "q_sign"], ["tail"]),
        oh.make_node("Abs", ["q"], ["q_abs"]),
        oh.make_node("LessOrEqual", ["q_abs", "c_q_central"], ["in_central"]),
        oh.make_node("Where", ["in_central", "central", "tail"], [out]),
    ]


def _qmc_sampler_nodes(width: int) -> list[onnx.NodeProto]:
    """Nodes computing ``noise`` (S, width) float32 by randomized QMC (models/qmc.py):
    row s takes Sobol point i(s) = floor(s / M) mod N of the table P (a Constant, N x
    width uint32) XOR the shift D[j(s)], j(s) = s mod M + M floor(s / (M N)), then
    u = (digits + 1/2) / 2^23 and Phi^-1(u). Shift j's column c is the top 23 bits of
    mix(key + GOLDEN * (j * width + c + 1)), key as for the plain sampler."""
    table = qmc.sobol_table(width)
    groups, points = qmc.QMC_GROUPS, len(table)
    return [
        _const("c_table", table, np.uint32),
        _const("c_groups", groups, np.int64),
        _const("c_points", points, np.int64),
        _const("c_pass", groups * points, np.int64),
        _const("c_pass_1", groups * points - 1, np.int64),
        _const("c_width", width, np.int64),
        _const("c_one", 1, np.int64),
        _const("c_digits_shift", 64 - qmc.DIGITS, np.uint64),
        _const("c_golden", GOLDEN, np.uint64),
        _const("c_shift_shape", [-1, width], np.int64),
        _const("c_inv_digits", 2.0**-qmc.DIGITS, np.float32),
        _const("c_half_f", 0.5, np.float32),
        *_key_nodes(),
        # each row's point and shift
        oh.make_node("Range", ["c_zero", "num_samples", "c_one"], ["row"]),
        oh.make_node("Div", ["row", "c_groups"], ["row_div"]),
        oh.make_node("Mod", ["row_div", "c_points"], ["point"]),
        oh.make_node("Mod", ["row", "c_groups"], ["row_group"]),
        oh.make_node("Div", ["row", "c_pass"], ["row_pass"]),
        oh.make_node("Mul", ["row_pass", "c_groups"], ["pass_offset"]),
        oh.make_node("Add", ["row_group", "pass_offset"], ["shift_index"]),
        # the shifts: M per pass over the points, width 23-bit digits each
        oh.make_node("Add", ["num_samples", "c_pass_1"], ["samples_up"]),
        oh.make_node("Div", ["samples_up", "c_pass"], ["num_passes"]),
        oh.make_node("Mul", ["num_passes", "c_groups"], ["num_shift_rows"]),
        oh.make_node("Mul", ["num_shift_rows", "c_width"], ["num_words"]),
        oh.make_node("Add", ["num_words", "c_one"], ["num_words_1"]),
        oh.make_node("Range", ["c_one", "num_words_1", "c_one"], ["counter_i"]),
        oh.make_node("Cast", ["counter_i"], ["counter"], to=TensorProto.UINT64),
        oh.make_node("Mul", ["counter", "c_golden"], ["stride"]),
        oh.make_node("Add", ["stride", "key"], ["state"]),
        *_mix64_nodes("state", "word", "w"),
        oh.make_node("BitShift", ["word", "c_digits_shift"], ["digit64"], direction="RIGHT"),
        oh.make_node("Cast", ["digit64"], ["digit32"], to=TensorProto.UINT32),
        oh.make_node("Reshape", ["digit32", "c_shift_shape"], ["shifts"]),
        # u = ((P[i(s)] XOR D[j(s)]) + 1/2) / 2^23, then Phi^-1
        oh.make_node("Gather", ["c_table", "point"], ["row_points"], axis=0),
        oh.make_node("Gather", ["shifts", "shift_index"], ["row_shifts"], axis=0),
        oh.make_node("BitwiseXor", ["row_points", "row_shifts"], ["digits"]),
        oh.make_node("Cast", ["digits"], ["digits_f"], to=TensorProto.FLOAT),
        oh.make_node("Add", ["digits_f", "c_half_f"], ["digits_c"]),
        oh.make_node("Mul", ["digits_c", "c_inv_digits"], ["uniform"]),
        *_normal_quantile_nodes("uniform", "noise"),
    ]


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(MIX1)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(MIX2)
        return x ^ (x >> np.uint64(31))


def qmc_normals(seed: int, num_samples: int, width: int) -> np.ndarray:
    """The QMC sampler's noise for a seed >= 0, in numpy: the (S, width) float32 matrix the
    graph feeds its core (same integer arithmetic; float ops may differ in the last bit)."""
    table = qmc.sobol_table(width)
    rows = qmc.num_shifts(num_samples, len(table))
    key = _mix64(np.asarray(seed, dtype=np.uint64))
    counter = np.arange(1, rows * width + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        words = _mix64(counter * np.uint64(GOLDEN) + key)
    shifts = qmc.shift_words(words).reshape(rows, width)
    return qmc.normals_from_shifts(table, shifts, num_samples)


def sampler_normals(mode: str, seed: int, num_samples: int, width: int) -> np.ndarray:
    """The numpy twin of ``sampler_nodes(width, mode)`` for a seed >= 0."""
    if mode == "qmc":
        return qmc_normals(seed, num_samples, width)
    return counter_normals(seed, num_samples, width)


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


def _references(graph: onnx.GraphProto, name: str) -> bool:
    """Whether any node of ``graph`` or of its subgraphs reads the value ``name``."""
    for node in graph.node:
        if name in node.input:
            return True
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            if any(_references(g, name) for g in subgraphs):
                return True
    return False


def _noise_branch(graph: onnx.GraphProto) -> onnx.GraphProto:
    """The one If branch of the core's top level that reads ``noise`` (the MC moments)."""
    if any("noise" in node.input for node in graph.node):
        raise ValueError("the core reads noise outside its If on num_samples > 0")
    branches = [
        attr.g
        for node in graph.node
        if node.op_type == "If"
        for attr in node.attribute
        if _references(attr.g, "noise")
    ]
    if len(branches) != 1:
        raise ValueError(f"expected one If branch reading noise in the core, found {len(branches)}")
    return branches[0]


def with_sampler(
    core: onnx.ModelProto, width: int, eval_samples: int, mode: str = "qmc"
) -> onnx.ModelProto:
    """Replace the core's ``noise`` input by the sampler, put inside the core's If branch
    that computes the MC moments (so num_samples <= 0 draws nothing), and make inputs
    ``num_samples`` and ``seed`` optional (initializers of the same name give their
    defaults: eval S, and -1 = fresh draws)."""
    graph = core.graph
    branch = _noise_branch(graph)
    nodes = [*sampler_nodes(width, mode), *branch.node]
    del branch.node[:]
    branch.node.extend(nodes)
    inputs = [i for i in graph.input if i.name not in ("noise", "num_samples")]
    defaults = [
        numpy_helper.from_array(np.asarray(eval_samples, dtype=np.int64), "num_samples"),
        numpy_helper.from_array(np.asarray(-1, dtype=np.int64), "seed"),
    ]
    inputs += [oh.make_tensor_value_info(d.name, TensorProto.INT64, []) for d in defaults]
    merged = oh.make_graph(
        list(graph.node),
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
