"""app/serving/onnx_model.py: the torch-free runtime over an exported file (made here with models/)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh

from app.serving.onnx_model import ModelFileError, OnnxModel
from core.onnx_contract import rank_pairs
from core.spec import BackboneSpec, HeadSpec, RunSpec
from models.classifier import build_classifier
from models.export import export_onnx
from tests.support.model_serving import without_noise_free_output

D, K = 5, 12
CLASS_NAMES = [f"class-{i}" for i in range(K)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inputs(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    spec = RunSpec(
        head=HeadSpec(kind="het", num_factors=3, temperature=1.0, eval_mc_samples=300),
        backbone=BackboneSpec(hidden=[16]),
    )
    model = build_classifier(spec, [D], K, np.zeros(D, np.float32), np.ones(D, np.float32)).eval()
    with torch.no_grad():
        model.head.loc.weight.mul_(4.0)
        model.head.factor.weight.mul_(3.0)  # strong correlations to rank
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, torch_model):
    path = tmp_path_factory.mktemp("onnx") / "het.onnx"
    export_onnx(torch_model, path, class_names=CLASS_NAMES, parity_inputs=inputs(16, seed=1))
    return path


def test_metadata_is_parsed(model_path):
    model = OnnxModel(model_path)
    meta = model.metadata
    assert meta["class_names"] == CLASS_NAMES and meta["input_shape"] == [D]
    assert meta["task"] == "multiclass" and meta["eval_mc_samples"] == 300
    assert meta["head"]["kind"] == "het" and meta["head"]["num_factors"] == 3
    assert meta["parity"]["passed"] and meta["version"]


def test_mc_stderr_from_one_draw_is_null(model_path):
    """S = 1: the graph's mc_stderr is NaN (no spread to measure), the row's is null, and
    the rows stay strict JSON; from S = 2 on it is a number again."""
    model = OnnxModel(model_path)
    one = model.run(inputs(3), num_samples=1, seed=5)
    assert np.isnan(one["mc_stderr"]).all()
    rows = model.rows(one, 1)
    json.dumps(rows, allow_nan=False)
    assert all(row["mc_stderr"] is None and row["prob_std"] is not None for row in rows)
    two = model.rows(model.run(inputs(3), num_samples=2, seed=5), 2)
    assert all(np.isfinite(row["mc_stderr"]).all() for row in two)


def test_rows_carry_the_design_fields(model_path):
    model = OnnxModel(model_path)
    num = 400
    out = model.run(inputs(6), num_samples=num, seed=11)
    rows = model.rows(out, num, top_k=3, correlated_pairs=True, max_pairs=4)
    json.dumps(rows)  # JSON-ready
    assert len(rows) == 6
    for i, row in enumerate(rows):
        probs = np.asarray(row["probs"])
        assert (
            row["label"] == int(np.argmax(probs)) and row["class_name"] == CLASS_NAMES[row["label"]]
        )
        assert row["confidence"] == probs.max()
        assert row["entropy"] == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-4)
        assert 0 <= row["expected_entropy"] <= row["entropy"] + 1e-6  # Jensen
        np.testing.assert_array_equal(row["mc_stderr"], out["mc_stderr"][i])  # the graph's
        # QMC: below the plain-MC error bar prob_std / sqrt(S) on the whole
        assert np.mean(row["mc_stderr"]) < np.mean(row["prob_std"]) / math.sqrt(num)
        assert len(row["noise_std"]) == K and min(row["noise_std"]) > 0
        assert [t["class"] for t in row["top_k"]] == list(np.argsort(-probs)[:3])
        assert row["top_k"][0]["class_name"] == row["class_name"]

        pairs = row["correlated_pairs"]
        classes, rho = out["top_classes"][i].tolist(), out["top_correlation"][i]
        off_diagonal = np.abs(rho[np.triu_indices(len(classes), 1)])
        assert len(pairs) == 4
        strengths = [abs(p["correlation"]) for p in pairs]
        assert strengths == sorted(strengths, reverse=True)
        assert strengths[0] == pytest.approx(off_diagonal.max())
        for pair in pairs:
            a, b = pair["classes"]
            assert pair["correlation"] == pytest.approx(
                float(rho[classes.index(a), classes.index(b)])
            )


def test_rows_leave_out_pairs_and_top_k_unless_asked(model_path):
    model = OnnxModel(model_path)
    row = model.rows(model.run(inputs(1)), 300)[0]
    assert "correlated_pairs" not in row and "top_k" not in row


def test_exactly_uncorrelated_classes_give_no_pairs():
    assert rank_pairs(np.array([3, 1, 2]), np.eye(3, dtype=np.float32)) == []
    rho = np.array([[1, 0.2, -0.7], [0.2, 1, 0], [-0.7, 0, 1]], dtype=np.float32)
    assert rank_pairs(np.array([3, 1, 2]), rho) == [
        {"classes": [3, 2], "correlation": pytest.approx(-0.7)},
        {"classes": [3, 1], "correlation": pytest.approx(0.2)},
    ]


def test_batches_larger_than_max_elements_are_split(model_path):
    model = OnnxModel(model_path, max_elements=2 * 50 * K)  # two rows per session call
    out = model.run(inputs(5), num_samples=50)
    assert out["probs"].shape == (5, K) and out["top_correlation"].shape == (
        5,
        10,
        10,
    )  # T = min(10, K)
    np.testing.assert_allclose(out["probs"].sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (np.zeros((2, D + 1)), {}, "shape"),
        (np.zeros((0, D)), {}, "at least one"),
        (np.full((1, D), np.nan), {}, "finite"),
        (np.zeros((1, D)), {"num_samples": -1}, "num_samples"),
        (np.zeros((1, D)), {"seed": -1}, "seed"),
        (np.zeros((1, D)), {"seed": 2**63}, "seed"),
    ],
)
def test_bad_calls_are_refused(model_path, x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnnxModel(model_path).run(x, **kwargs)


def test_noise_free_rows_are_softmax_of_mu_over_tau_without_sampling(model_path, torch_model):
    model = OnnxModel(model_path)
    x = inputs(7, seed=3)
    out = model.run(x, num_samples=0, seed=5)
    rows = model.rows(out, 0, top_k=2, correlated_pairs=True, predictive="noise_free")
    json.dumps(rows)
    with torch.no_grad():
        expected = torch_model.noise_free_probs(torch.as_tensor(x)).double().numpy()
        z = torch_model.head.latent(torch_model.features(torch.as_tensor(x))).mu
        by_hand = torch.softmax(z / torch_model.head.temperature, -1).double().numpy()
    np.testing.assert_allclose(expected, by_hand, atol=1e-6)
    marginal = model.rows(model.run(x, num_samples=200, seed=5), 200)
    for i, row in enumerate(rows):
        probs = np.asarray(row["probs"])
        np.testing.assert_allclose(probs, expected[i], atol=1e-5)
        assert row["noise_free_probs"] == row["probs"]
        assert row["label"] == int(np.argmax(expected[i]))
        assert row["class_name"] == CLASS_NAMES[row["label"]]
        assert row["confidence"] == probs.max()
        assert row["entropy"] == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-4)
        assert row["expected_entropy"] is None and row["prob_std"] is None
        assert row["mc_stderr"] is None
        assert [t["class"] for t in row["top_k"]] == list(np.argsort(-probs)[:2])
        # exact without sampling: the same as in a marginal call
        np.testing.assert_allclose(row["noise_std"], marginal[i]["noise_std"], rtol=1e-6)
        assert row["correlated_pairs"]
        # every marginal row carries the noise-free predictive too
        np.testing.assert_allclose(marginal[i]["noise_free_probs"], expected[i], atol=1e-5)
        assert marginal[i]["probs"] != marginal[i]["noise_free_probs"]


def test_seeded_noise_free_rows_are_bit_identical_whatever_they_are_batched_with(model_path):
    model = OnnxModel(model_path)
    x = inputs(6, seed=4)
    alone = model.run(x[2:3], num_samples=0, seed=9)["noise_free_probs"]
    batched = model.run(x, num_samples=0, seed=9)["noise_free_probs"]
    assert alone.tobytes() == batched[2:3].tobytes()


def test_a_file_without_the_noise_free_output_serves_marginal_only(model_path, tmp_path):
    model = OnnxModel(without_noise_free_output(model_path, tmp_path / "old.onnx"))
    assert not model.has_noise_free and OnnxModel(model_path).has_noise_free
    with pytest.raises(ValueError, match="num_samples"):
        model.run(inputs(1), num_samples=0)
    out = model.run(inputs(2), num_samples=50)
    rows = model.rows(out, 50)
    assert "noise_free_probs" not in rows[0] and rows[0]["prob_std"] is not None
    with pytest.raises(ValueError, match="noise_free_probs"):
        model.rows(out, 50, predictive="noise_free")


def test_files_that_are_not_hetserve_models_are_refused(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="cannot load"):
        OnnxModel(garbage)
    graph = oh.make_graph(
        [oh.make_node("Identity", ["input"], ["probs"])],
        "plain",
        [oh.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [oh.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 2])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), plain)
    with pytest.raises(ModelFileError, match="not a hetserve model"):
        OnnxModel(plain)


def test_runs_in_a_process_where_torch_cannot_be_imported(model_path, tmp_path):
    x = inputs(4, seed=5)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch importable")
import json
import numpy as np
from app.serving.onnx_model import OnnxModel
model = OnnxModel({str(model_path)!r})
out = model.run(np.load({str(tmp_path / "x.npy")!r}), num_samples=200, seed=7)
rows = model.rows(out, 200, top_k=2, correlated_pairs=True)
heavy = ("torch", "onnx", "onnxscript", "worker")
assert not [m for m in sys.modules if m.split(".")[0] in heavy and sys.modules[m] is not None]
print(json.dumps(rows))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    model = OnnxModel(model_path)
    ours = model.rows(model.run(x, num_samples=200, seed=7), 200, top_k=2, correlated_pairs=True)
    assert theirs == json.loads(json.dumps(ours))  # bit-identical, through JSON
