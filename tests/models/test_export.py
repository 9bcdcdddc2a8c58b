"""models/export/: the ONNX file with the MC sampling inside, checked against PyTorch.

Tiny randomly initialised models (MLP backbone) keep this fast; sampled numbers are
compared against their MC standard errors, deterministic ones to float32 rounding.
"""

from __future__ import annotations

import gc
import json
import math
import os
import select
import signal
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh

from app.serving.onnx_model import OnnxModel
from core.onnx_contract import OUTPUTS, SAMPLED_OUTPUTS, TOP_CLASSES
from core.spec import BackboneSpec, HeadSpec, RunSpec
from models.classifier import build_classifier
from models.export import (
    OPSET,
    OUTPUT_NAMES,
    ExportError,
    export_onnx,
    noise_width,
    sampler_nodes,
    sampler_normals,
)
from models.export import core as export_core
from models.het_formula import LogitGaussian, reference_moments
from models.uncertainty import predictive_uncertainty, top_correlations

D = 6
K = 7
EVAL_S = 400
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_model(
    kind="het", task="multiclass", num_factors=3, parameter_efficient=False, seed=0, classes=K
):
    torch.manual_seed(seed)
    spec = RunSpec(
        task=task,
        head=HeadSpec(
            kind=kind,
            num_factors=num_factors,
            temperature=1.5,
            eval_mc_samples=EVAL_S,
            parameter_efficient=parameter_efficient,
        ),
        backbone=BackboneSpec(hidden=[16]),
    )
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=D).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=D).astype(np.float32)
    model = build_classifier(spec, [D], classes, mean, std)
    with torch.no_grad():  # spread the logits so the probabilities are not all ~1/K
        model.head.loc.weight.mul_(4.0)
    return model.eval()


def inputs(n, seed=1):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32) * 2


CASES = {
    "het": dict(kind="het"),
    "het_r0": dict(kind="het", num_factors=0),
    "softmax": dict(kind="softmax"),
    "multilabel_pe": dict(kind="het", task="multilabel", parameter_efficient=True),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model, path, metadata) for every case, exported once."""
    out = {}
    for name, kw in CASES.items():
        model = make_model(**kw)
        path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        meta = export_onnx(
            model,
            path,
            class_names=[f"c{i}" for i in range(K)],
            parity_inputs=inputs(32, seed=2),
            extra_metadata={"model_id": name},
        )
        out[name] = (model, path, meta)
    return out


def plain_session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_plain(session, x, **feeds):
    feeds = {k: np.asarray(v, dtype=np.int64) for k, v in feeds.items()}
    return dict(
        zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"input": x, **feeds}), strict=True)
    )


# -- the file ----------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_file_passes_checker_and_carries_metadata(exported, name):
    model, path, meta = exported[name]
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["hetserve.class_names"] == [f"c{i}" for i in range(K)]
    assert props["hetserve.input_shape"] == [D]
    assert props["hetserve.task"] == model.head.task
    assert props["hetserve.head"]["kind"] == CASES[name]["kind"]
    assert props["hetserve.eval_mc_samples"] == model.head.eval_mc_samples
    assert props["hetserve.parity"]["passed"] and props["hetserve.parity"]["max_z"] <= 4
    assert props["hetserve.model_id"] == name
    assert props["hetserve.version"]
    assert {k[len("hetserve.") :] for k in props} == set(meta)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert proto.graph.input[0].name == "input" and batch_dim.dim_param  # dynamic batch


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("num_samples", [0, 5])
def test_outputs_have_the_contract_dtype_and_shape(exported, name, num_samples):
    model, path, _ = exported[name]
    got = run_plain(plain_session(path), inputs(3), num_samples=num_samples, seed=1)
    sizes = {"B": 3, "K": K, "T": min(TOP_CLASSES, K)}
    for output in OUTPUTS:
        value = got[output.name]
        assert value.dtype == np.dtype(output.dtype), output.name
        assert value.shape == tuple(sizes[d] for d in output.dims(model.head.task)), output.name


@pytest.mark.parametrize("name", CASES)
def test_outputs_equal_torch_reference_on_the_same_noise(exported, name):
    """The graph = its sampler's numpy twin (seed) fed to the torch reference, to float32
    rounding: every output, mc_stderr from the 8 QMC groups included."""
    model, path, _ = exported[name]
    x, seed, num = inputs(9), 77, 300
    got = run_plain(plain_session(path), x, num_samples=num, seed=seed)
    head = model.head
    noise = None
    if CASES[name]["kind"] == "het":
        assert head.eval_noise == "qmc"  # the default
        eps = torch.from_numpy(sampler_normals("qmc", seed, num, noise_width(model)))
        noise = (eps[:, K:], eps[:, :K])
    ref = predictive_uncertainty(head, model.features(torch.from_numpy(x)), num, noise=noise)
    for out in OUTPUT_NAMES:
        expected = ref[out].numpy()
        assert got[out].shape == expected.shape, out
        if out == "top_classes":
            np.testing.assert_array_equal(got[out], expected)
        else:
            np.testing.assert_allclose(got[out], expected, rtol=2e-4, atol=2e-5, err_msg=out)


def test_dynamic_batch_and_num_samples_per_call(exported):
    _, path, _ = exported["het"]
    session = plain_session(path)
    for batch in (1, 5, 64):
        for num in (1, 37, 2000):
            got = run_plain(session, inputs(batch), num_samples=num, seed=3)
            assert got["probs"].shape == (batch, K)
            assert got["top_correlation"].shape == (batch, K, K)
            np.testing.assert_allclose(got["probs"].sum(-1), 1, atol=1e-5)
    default = run_plain(session, inputs(4), seed=3)  # default S = the model's eval S
    explicit = run_plain(session, inputs(4), num_samples=EVAL_S, seed=3)
    np.testing.assert_array_equal(default["probs"], explicit["probs"])


@pytest.mark.parametrize("name", ["het", "multilabel_pe"])
def test_served_estimate_agrees_with_large_s_torch_within_mc_error(exported, name):
    """Independent noise on both sides: |p_onnx - p_torch| <= 4 combined standard errors."""
    model, path, _ = exported[name]
    x, num_onnx, num_torch = inputs(16, seed=9), 3000, 20_000
    got = run_plain(plain_session(path), x, num_samples=num_onnx, seed=123)
    gen = torch.Generator().manual_seed(5)
    ref = predictive_uncertainty(model.head, model.features(torch.from_numpy(x)), num_torch, gen)
    se = np.sqrt((got["prob_std"] ** 2) / num_onnx + ref["mc_stderr"].numpy() ** 2)
    z = np.abs(got["probs"] - ref["probs"].numpy()) / se
    assert z.max() <= 4, z.max()
    assert got["prob_std"].max() > 0.01  # the check had something to compare


def test_multilabel_outputs_are_per_label(exported):
    _, path, _ = exported["multilabel_pe"]
    got = run_plain(plain_session(path), inputs(3), seed=1)
    assert got["entropy"].shape == got["expected_entropy"].shape == (3, K)
    assert np.all(got["entropy"] <= np.log(2) + 1e-6)
    assert np.all(got["expected_entropy"] <= got["entropy"] + 1e-5)  # Jensen, per label


def test_softmax_baseline_has_zeros_where_nothing_is_sampled(exported):
    _, path, _ = exported["softmax"]
    got = run_plain(plain_session(path), inputs(5), num_samples=50, seed=2)
    assert (
        not got["prob_std"].any()
        and not got["noise_std"].any()
        and not got["top_correlation"].any()
    )
    np.testing.assert_allclose(got["expected_entropy"], got["entropy"], rtol=1e-5)


# -- the noise-free predictive and num_samples = 0 ------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_zero_samples_returns_the_exact_outputs_and_placeholders(exported, name):
    """S = 0: noise_free_probs = softmax(mu / tau) (sigmoid per label) computed in torch,
    noise_std and the correlations (ranked by noise_free_probs) exact, and the sampled
    outputs finite placeholders: zeros for HET, the exact values for the baseline."""
    model, path, meta = exported[name]
    x = inputs(9)
    got = run_plain(plain_session(path), x, num_samples=0, seed=5)
    head = model.head
    with torch.no_grad():
        latent = head.latent(model.features(torch.from_numpy(x)))
        logits = latent.mu / head.temperature
        free = torch.softmax(logits, -1) if head.task == "multiclass" else torch.sigmoid(logits)
        classes, rho = top_correlations(latent, free)
        noise_std = latent.variance().sqrt()
    assert all(np.isfinite(v).all() for v in got.values())
    np.testing.assert_allclose(got["noise_free_probs"], free.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["noise_std"], noise_std.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(got["top_classes"], classes.numpy())
    np.testing.assert_allclose(got["top_correlation"], rho.numpy(), rtol=1e-4, atol=1e-5)
    if CASES[name]["kind"] == "het":
        assert not any(got[out].any() for out in SAMPLED_OUTPUTS)
        assert got["noise_std"].min() > 0  # noise there is, it is just not sampled
    else:
        np.testing.assert_array_equal(got["probs"], got["noise_free_probs"])
    assert meta["parity"]["zero_samples_finite"]
    assert meta["parity"]["zero_samples_noise_free_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_noise_free_probs_do_not_depend_on_num_samples_or_seed(exported, name):
    _, path, meta = exported[name]
    session, x = plain_session(path), inputs(6)
    zero = run_plain(session, x, num_samples=0, seed=1)["noise_free_probs"]
    for num, seed in ((1, 2), (300, 3), (EVAL_S, -1)):
        got = run_plain(session, x, num_samples=num, seed=seed)
        np.testing.assert_array_equal(got["noise_free_probs"], zero)
        if CASES[name]["kind"] == "het":  # the MC predictive is another number
            assert np.abs(got["probs"] - zero).max() > 1e-3
    assert meta["parity"]["noise_free_max_abs_diff"] <= 1e-5


def test_zero_samples_runs_no_sampler():
    """The sampler sits inside the If on num_samples > 0, not in the main graph."""
    from models.export import build_onnx

    proto = build_onnx(make_model(), [D])
    main = proto.graph.node
    assert not any(n.name.startswith("sampler/") for n in main)
    (branch_if,) = [n for n in main if n.op_type == "If"]
    branches = {a.name: a.g for a in branch_if.attribute}
    assert any(n.name.startswith("sampler/") for n in branches["then_branch"].node)
    assert not any(n.name.startswith("sampler/") for n in branches["else_branch"].node)


# -- the sampler ---------------------------------------------------------------------


def sampler_session(width, mode="qmc"):
    graph = oh.make_graph(
        sampler_nodes(width, mode),
        "sampler",
        [oh.make_tensor_value_info(n, TensorProto.INT64, []) for n in ("num_samples", "seed")],
        [oh.make_tensor_value_info("noise", TensorProto.FLOAT, [None, width])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("width", "mode"), [(7, "mc"), (10, "mc"), (7, "qmc"), (10, "qmc")])
def test_sampler_matches_numpy_and_is_standard_normal(width, mode):
    """Both samplers: the graph = the numpy twin; marginally N(0, 1) (QMC draws meet MC's
    bounds a fortiori), columns and consecutive draws uncorrelated; S = 20 000 runs past
    the QMC table (8 x 1024 rows), so new shifts of the same points pass too."""
    session = sampler_session(width, mode)
    num = 20_000
    noise = session.run(
        None,
        {"num_samples": np.asarray(num, dtype=np.int64), "seed": np.asarray(42, dtype=np.int64)},
    )[0]
    np.testing.assert_allclose(noise, sampler_normals(mode, 42, num, width), atol=1e-5)
    n = noise.size
    flat = noise.astype(np.float64).ravel()
    assert abs(flat.mean()) <= 4 / np.sqrt(n)
    assert abs(flat.var() - 1) <= 4 * np.sqrt(2 / n)
    assert abs(np.mean(flat**4) - 3) <= 4 * np.sqrt(96 / n)  # Var[x^4] = 105 - 9
    tail = np.mean(np.abs(flat) > 2.5)  # P(|x| > 2.5) = 0.012419
    assert abs(tail - 0.012419) <= 4 * np.sqrt(0.012419 * (1 - 0.012419) / n)
    corr = np.corrcoef(noise, rowvar=False)  # columns, incl. the cos/sin halves of one pair
    assert np.abs(corr[np.triu_indices(width, 1)]).max() <= 4 / np.sqrt(num) * 1.5
    if mode == "mc":  # QMC rows are dependent by design (one shift per group, nets
        # within a group); its groups' independence is tested in tests/models/test_qmc.py
        lag = np.mean(noise[1:] * noise[:-1])  # consecutive draws
        assert abs(lag) <= 4 / np.sqrt(noise[1:].size)
    # a larger S extends a smaller S's draws (to the last bit of Log/Cos/Sin, whose
    # scalar tail loop rounds differently); another seed gives other draws
    head = session.run(
        None,
        {"num_samples": np.asarray(10, dtype=np.int64), "seed": np.asarray(42, dtype=np.int64)},
    )[0]
    np.testing.assert_allclose(head, noise[:10], rtol=1e-6, atol=1e-7)
    other = session.run(
        None,
        {"num_samples": np.asarray(10, dtype=np.int64), "seed": np.asarray(43, dtype=np.int64)},
    )[0]
    assert not np.allclose(other, head)


@pytest.mark.parametrize("mode", ["mc", "qmc"])
def test_unseeded_sampler_draws_fresh_numbers_each_call(mode):
    session = sampler_session(5, mode)
    a, b = (
        session.run(
            None,
            {"num_samples": np.asarray(4, dtype=np.int64), "seed": np.asarray(-1, dtype=np.int64)},
        )[0]
        for _ in range(2)
    )
    assert not np.array_equal(a, b)


# -- seeding ---------------------------------------------------------------------------


def test_seeded_outputs_are_bit_identical_across_calls_and_sessions(exported):
    _, path, _ = exported["het"]
    x = inputs(12)
    first = run_plain(plain_session(path), x, seed=2024)
    again = run_plain(plain_session(path), x, seed=2024)
    for out in OUTPUT_NAMES:
        np.testing.assert_array_equal(first[out], again[out])
    assert not np.array_equal(run_plain(plain_session(path), x, seed=2025)["probs"], first["probs"])


def test_seeded_rows_do_not_depend_on_batch_companions(exported):
    """Same noise for every batch. Raw graph: equal to float32 rounding (elementwise
    kernels round a tensor's tail differently); OnnxModel (one row per call): bit for bit."""
    _, path, _ = exported["het"]
    x, row = inputs(12), 5
    session = plain_session(path)
    alone = run_plain(session, x[row : row + 1], seed=2024)
    crowded = run_plain(
        session, np.concatenate([inputs(40, seed=8), x[row : row + 1], x[:2]]), seed=2024
    )
    np.testing.assert_allclose(crowded["probs"][40], alone["probs"][0], rtol=1e-5, atol=1e-7)
    model = OnnxModel(path)
    alone = model.run(x[row : row + 1], seed=2024)
    for companions in (
        x,
        np.concatenate([inputs(40, seed=8), x[row : row + 1]]),
        x[row : row + 1].repeat(3, 0),
    ):
        batched = model.run(companions, seed=2024)
        position = next(i for i in range(len(companions)) if np.array_equal(companions[i], x[row]))
        for out in OUTPUT_NAMES:
            np.testing.assert_array_equal(batched[out][position], alone[out][0], err_msg=out)


def test_seeded_outputs_are_bit_identical_in_another_process(exported, tmp_path):
    _, path, _ = exported["het"]
    x = inputs(6)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np; from app.serving.onnx_model import OnnxModel; "
        f"m = OnnxModel({str(path)!r}); "
        f"out = m.run(np.load({str(tmp_path / 'x.npy')!r}), num_samples=250, seed=99); "
        f"np.savez({str(tmp_path / 'out.npz')!r}, **out)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    theirs = np.load(tmp_path / "out.npz")
    ours = OnnxModel(path).run(x, num_samples=250, seed=99)
    for out in OUTPUT_NAMES:
        np.testing.assert_array_equal(theirs[out], ours[out])


def test_unseeded_calls_draw_fresh_noise(exported):
    _, path, _ = exported["het"]
    x = inputs(3)
    model = OnnxModel(path)
    a, b = model.run(x, num_samples=50), model.run(x, num_samples=50)
    assert not np.array_equal(a["probs"], b["probs"])
    session = plain_session(path)  # the graph's own fallback (seed input left out)
    assert not np.array_equal(run_plain(session, x)["probs"], run_plain(session, x)["probs"])


def test_two_sessions_in_one_process_do_not_repeat_each_other(exported):
    _, path, _ = exported["het"]
    x = inputs(3)
    first, second = OnnxModel(path), OnnxModel(path)
    for _ in range(3):
        assert not np.array_equal(
            first.run(x, num_samples=50)["probs"], second.run(x, num_samples=50)["probs"]
        )


def probs_from_forked_child(model, x, timeout=60.0):
    """Fork; the child runs the model (fresh draws), sends probs back, drops the model
    (its inherited session must not hang on the way out) and exits."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            probs = model.run(x, num_samples=50)["probs"]
            del model
            gc.collect()
            os.write(write, probs.tobytes())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child hung")
        with os.fdopen(read, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    return np.frombuffer(data, dtype=np.float32).reshape(len(x), K)


def test_forked_processes_do_not_repeat_each_other(exported):
    """Children forked after the session was created (and used) each draw their own noise."""
    _, path, _ = exported["het"]
    x = inputs(3)
    model = OnnxModel(path, intra_op_threads=2)
    parent = model.run(x, num_samples=50)["probs"]
    first, second = probs_from_forked_child(model, x), probs_from_forked_child(model, x)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, parent) and not np.array_equal(second, parent)
    assert model.run(x, num_samples=50)["probs"].shape == parent.shape  # the parent still works


# -- a confident input: the spread of p far below p -----------------------------------


def confident_model(classes=10, mu0=10.0, scale=0.01):
    """Every input gets z = u / tau ~ N((mu0, 0, ..., 0), scale^2 I) (R = 0): the cancellation
    case, p_0 ~ 1 - 4e-4 with a prob_std of a few 1e-6."""
    model = make_model(num_factors=0, classes=classes)
    head = model.head
    tau = float(head.temperature)
    with torch.no_grad():
        for layer in (head.loc, head.diag):
            layer.weight.zero_()
        head.loc.bias.zero_()
        head.loc.bias[0] = mu0 * tau
        head.diag.bias.fill_(math.log(math.expm1(scale * tau - head.min_scale)))
    return model


def reference_moments_by_raw_second_moment(latent, eps_r, eps_k, task, groups=None):
    """The formula the export traced before the two-pass form: E[p^2] - E[p]^2 in float32."""
    m = reference_moments(latent, eps_r, eps_k, task, groups)
    p = torch.softmax(latent.sample(eps_r, eps_k), -1)
    num = torch.ones_like(p[:, :, :1]).sum(1)
    var = ((p * p).mean(1) - m["probs"] * m["probs"]).clamp_min(0) * num / (num - 1)
    return {**m, "prob_std": var.sqrt()}


def test_prob_std_of_a_confident_input_is_right_in_the_file(tmp_path):
    """K = 10, mu0 = 10, d = 0.01, S = 1000: the file's prob_std equals the float64 sample
    std of the same draws to 3e-3 (it was exactly 0), within MC error of the population
    std, and the parity check measured it."""
    model, num, seed = confident_model(), 1000, 11
    meta = export_onnx(
        model, tmp_path / "m.onnx", class_names=[f"c{i}" for i in range(10)],
        parity_inputs=inputs(8),
    )  # fmt: skip
    assert meta["parity"]["same_noise_tolerance_ratio"]["prob_std"] <= 1
    got = run_plain(plain_session(tmp_path / "m.onnx"), inputs(2), num_samples=num, seed=seed)
    h = model.features(torch.from_numpy(inputs(1)))
    latent = model.head.latent(h).scaled(1 / model.head.temperature)
    mu, scale = latent.mu.detach().double(), latent.scale.detach().double()
    eps = torch.from_numpy(sampler_normals("qmc", seed, num, 10)).double()
    sample_std = reference_moments(LogitGaussian(mu, scale), None, eps, "multiclass")["prob_std"]
    assert sample_std[0, 0] > 1e-6
    # (3e-3: the float32 logits near 10 are themselves rounded to 1e-6, 0.14 % measured)
    np.testing.assert_allclose(got["prob_std"][0], sample_std[0].numpy(), rtol=3e-3)
    big = torch.randn(1 << 20, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    truth = torch.softmax(mu + scale * big, -1).std(0).numpy()
    assert (np.abs(got["prob_std"][0] - truth) <= 5 * truth / math.sqrt(2 * (num - 1))).all()


def test_parity_refuses_a_prob_std_that_cancels(tmp_path, monkeypatch):
    """The export parity compares every output relatively: the old E[p^2] - E[p]^2 graph
    (prob_std 0 on a confident input, probs and mc_stderr right) is refused."""
    monkeypatch.setattr(export_core, "reference_moments", reference_moments_by_raw_second_moment)
    with pytest.raises(ExportError, match="prob_std"):
        export_onnx(
            confident_model(), tmp_path / "bad.onnx", class_names=[f"c{i}" for i in range(10)],
            parity_inputs=inputs(8),
        )  # fmt: skip


# -- refusals ---------------------------------------------------------------------------


class ExportOnlyShift(torch.nn.Module):
    """Behaves differently while being exported: the graph no longer matches eager PyTorch."""

    def forward(self, x):
        return x + 3.0 if torch.compiler.is_exporting() else x


def test_parity_failure_refuses_the_export(tmp_path):
    model = make_model()
    model.backbone.net.insert(0, ExportOnlyShift())
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(
            model,
            tmp_path / "bad.onnx",
            class_names=[f"c{i}" for i in range(K)],
            parity_inputs=inputs(8),
        )
    assert not (tmp_path / "bad.onnx").exists()


def test_wrong_class_names_and_reserved_metadata_are_refused(tmp_path):
    names = [f"c{i}" for i in range(K)]
    with pytest.raises(ExportError, match="class names"):
        export_onnx(make_model(), tmp_path / "m.onnx", class_names=["a"], parity_inputs=inputs(4))
    with pytest.raises(ExportError, match="parity"):
        export_onnx(
            make_model(),
            tmp_path / "m.onnx",
            class_names=names,
            parity_inputs=inputs(4),
            extra_metadata={"parity": 1},
        )
