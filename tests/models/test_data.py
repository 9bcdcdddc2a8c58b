"""Dataset loading and validation: each malformed input raises DatasetError naming the fault."""

from __future__ import annotations

import io

import numpy as np
import pytest

from core.dataset_files import (
    ArrayDataset,
    DatasetError,
    load_dataset,
    save_npz,
    standardisation,
    validate,
    with_validation_split,
)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good_arrays(n=20, d=3, k=3):
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n, d)), "y_train": np.arange(n) % k}


def test_npz_round_trip(tmp_path):
    ds = load_dataset(npz_bytes(**good_arrays(), class_names=np.array(["a", "b", "c"])), "npz")
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.class_names == ["a", "b", "c"] and ds.task == "multiclass" and ds.input_shape == [3]
    save_npz(ds, tmp_path / "d.npz")
    again = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(again.x_train, ds.x_train) and again.class_names == ds.class_names


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x_train": np.array([[1.0], [2.0]], dtype=object), "y_train": np.array([0, 1])},
            "pickle",
        ),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 0])}, "4 rows but y_train has 3"),
        (
            {
                "x_train": np.zeros((4, 2)),
                "y_train": np.array([0, 1, 0, 1]),
                "x_val": np.zeros((2, 3)),
                "y_val": np.array([0, 1]),
            },
            "per-example shape",
        ),
        (
            {
                "x_train": np.zeros((4, 2)),
                "y_train": np.array([0, 1, 0, 5]),
                "class_names": np.array(["a", "b"]),
            },
            "out of range",
        ),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 0, -1])}, "negative"),
        (
            {"x_train": np.array([[0.0, 1], [np.nan, 1], [0, 1]]), "y_train": np.array([0, 1, 0])},
            "NaN or inf in float32 (first at row 1)",
        ),
        ({"x_train": np.array([[0.0, 1], [1, np.inf]]), "y_train": np.array([0, 1])}, "NaN or inf"),
        (
            {"x_train": np.array([[0.0, 1], [1, 1e300]]), "y_train": np.array([0, 1])},
            "NaN or inf in float32",
        ),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, dtype=int)}, "at least 2 classes"),
        (
            {
                "x_train": np.zeros((4, 2)),
                "y_train": np.array([0, 0, 0, 0]),
                "class_names": np.array(["a", "b"]),
            },
            "fewer than 2 distinct",
        ),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0.5, 1, 0, 1])}, "whole class indices"),
        (
            {"x_train": np.zeros((4, 2, 2)), "y_train": np.array([0, 1, 0, 1])},
            "[N, D] vectors or [N, C, H, W]",
        ),
        ({"x_train": np.zeros((2, 2)), "y_train": np.array([[0, 2], [1, 0]])}, "only 0 and 1"),
        ({"x_train": np.zeros((2, 2))}, "missing the required array 'y_train'"),
        (
            {"x_train": np.zeros((2, 2)), "y_train": np.array([0, 1]), "weights": np.ones(2)},
            "unexpected arrays",
        ),
        (
            {"x_train": np.zeros((2, 2)), "y_train": np.array([0, 1]), "x_val": np.zeros((2, 2))},
            "given together",
        ),
        (
            {"x_train": np.array([["a", "b"], ["c", "d"]]), "y_train": np.array([0, 1])},
            "must be numeric",
        ),
    ],
)
def test_bad_npz_raises_dataset_error(arrays, message):
    with pytest.raises(DatasetError) as err:
        load_dataset(npz_bytes(**arrays), "npz")
    assert message in str(err.value)


def test_pickled_object_array_is_refused_not_executed():
    # np.savez pickles object arrays; allow_pickle=False must refuse to unpickle them.
    with pytest.raises(DatasetError, match="pickle"):
        load_dataset(
            npz_bytes(x_train=np.array([{"a": 1}, None], dtype=object), y_train=np.array([0, 1])),
            "npz",
        )


def test_byte_string_class_names_are_decoded():
    ds = load_dataset(npz_bytes(**good_arrays(k=2), class_names=np.array([b"cat", b"dog"])), "npz")
    assert ds.class_names == ["cat", "dog"]


def test_not_an_npz_and_unknown_format():
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(b"garbage", "npz")
    with pytest.raises(DatasetError, match="unsupported dataset format"):
        load_dataset(b"x", "parquet")


def test_csv_with_numeric_and_named_labels():
    ds = load_dataset(b"f1,label,f2\n1.0,0,2\n3,1,4\n5,1,6\n", "csv")
    assert ds.x_train.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert ds.y_train.tolist() == [0, 1, 1] and ds.class_names == ["0", "1"]
    named = load_dataset(b"label,a\ncat,1\ndog,2\ncat,3\n", "csv")
    assert named.class_names == ["cat", "dog"] and named.y_train.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a,b\n1,2\n", "no 'label' column"),
        (b"label,a\n0,1\n1,x\n", "line 3: non-numeric"),
        (b"label,a\n0,1\n1,2,3\n", "line 3: 3 fields"),
        (b"label,a\n", "header row and at least one data row"),
        (b"label,a\n0,1\n1,nan\n", "NaN or inf"),
        (b"label,a\n0,1\n0,2\n", "at least 2 classes"),
        (b"\xff\xfe\x00label", "UTF-8"),
    ],
)
def test_bad_csv_raises_dataset_error(text, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        load_dataset(text, "csv")


def test_multilabel_and_images_validate():
    rng = np.random.default_rng(0)
    ds = validate(
        ArrayDataset(rng.normal(size=(6, 2, 4, 4)), np.array([[0, 1, 1]] * 3 + [[1, 0, 0]] * 3))
    )
    assert ds.task == "multilabel" and ds.num_classes == 3 and ds.input_shape == [2, 4, 4]
    assert ds.y_train.dtype == np.float32


def test_validation_split_is_seeded_and_disjoint():
    ds = validate(ArrayDataset(np.arange(40.0).reshape(20, 2), np.arange(20) % 2))
    a, b = with_validation_split(ds, 0.25, seed=3), with_validation_split(ds, 0.25, seed=3)
    c = with_validation_split(ds, 0.25, seed=4)
    assert len(a.x_val) == 5 and len(a.x_train) == 15
    assert np.array_equal(a.x_val, b.x_val) and not np.array_equal(a.x_val, c.x_val)
    rows = {tuple(r) for r in np.concatenate([a.x_train, a.x_val])}
    assert len(rows) == 20  # a partition of the original rows
    assert with_validation_split(a, 0.5, seed=0) is a  # an explicit x_val is kept


def test_standardisation_per_feature_and_per_channel():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    mean, std = standardisation(x)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # constant feature: std 1
    img = np.stack([np.full((2, 3, 3), v) for v in (0.0, 2.0)]).astype(np.float32)
    img[:, 1] += 10
    mean, std = standardisation(img)
    assert (
        mean.shape == (2, 1, 1)
        and mean.ravel().tolist() == [1.0, 11.0]
        and std.ravel().tolist() == [1.0, 1.0]
    )
