"""bench/cifar10n.py's data side: the python-release reader (on a tiny synthetic
release), the stratified subset, the tree builder (hard links, the product's row order)
and the data's own confusion pairs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bench.cifar10n import (
    CLASS_NAMES,
    build_tree,
    from_python_release,
    stratified_subset,
    true_pairs,
)


def write_release(folder, per_batch: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """data_batch_1..5 + test_batch in the release's pickle layout; (train pixels, labels)."""
    folder.mkdir()
    xs, ys = [], []
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, f)
        if name != "test_batch":
            xs.append(x)
            ys += y
    return np.concatenate(xs), np.asarray(ys)


def test_python_release_reader_keeps_the_release_order(tmp_path):
    rng = np.random.default_rng(0)
    x, clean = write_release(tmp_path / "cifar-10-batches-py", per_batch=4, rng=rng)
    worse = (clean + (rng.uniform(size=len(clean)) < 0.5)) % 10
    human = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": clean, "worse_label": worse, "aggre_label": clean}, human)

    data = from_python_release(tmp_path / "cifar-10-batches-py", human, tmp_path / "cache")
    assert len(data.train_files) == 20 and len(data.test_files) == 4
    np.testing.assert_array_equal(data.labels["worse"], worse)
    assert "random1" not in data.labels
    from PIL import Image

    # training example 13 is the 4th image of data_batch_4, channels-first in the pickle
    pixels = np.asarray(Image.open(data.train_files[13]))
    np.testing.assert_array_equal(pixels, x[13].reshape(3, 32, 32).transpose(1, 2, 0))

    wrong = tmp_path / "wrong.pt"
    torch.save({"clean_label": (clean + 1) % 10, "worse_label": worse}, wrong)
    with pytest.raises(SystemExit, match="release order"):
        from_python_release(tmp_path / "cifar-10-batches-py", wrong, tmp_path / "cache2")


def test_stratified_subset_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    rows = stratified_subset(labels, 100, seed=0)
    assert len(rows) == 100 and len(set(rows)) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [40, 30, 20, 10]
    assert np.array_equal(rows, stratified_subset(labels, 100, seed=0))
    assert len(stratified_subset(labels, None, seed=0)) == 1000


def test_tree_is_hard_links_in_the_products_row_order(tmp_path):
    rng = np.random.default_rng(1)
    _, clean = write_release(tmp_path / "release", per_batch=6, rng=rng)
    human = tmp_path / "human.pt"
    worse = rng.integers(0, 10, len(clean))
    torch.save({"clean_label": clean, "worse_label": worse}, human)
    data = from_python_release(tmp_path / "release", human, tmp_path / "cache")

    rows = np.array([0, 3, 7, 11, 29])
    tree = build_tree(data, "worse", tmp_path / "refs" / "c", rows, test_rows=np.array([1]))
    # every training file is a hard link into the cache, under its given label's folder
    for r, path in enumerate(tree.files):
        i = tree.rows[r]
        assert path.parent.name == CLASS_NAMES[worse[i]]
        assert path.stat().st_ino == data.train_files[i].stat().st_ino
    assert sorted(tree.rows.tolist()) == rows.tolist()
    # the product's order: class folders by name, then file names
    keys = [(p.parent.name, p.name) for p in tree.files]
    assert keys == sorted(keys)
    np.testing.assert_array_equal(tree.given, worse[tree.rows])
    np.testing.assert_array_equal(tree.clean, clean[tree.rows])
    assert len(list((tmp_path / "refs" / "c" / "test").rglob("*.png"))) == 1


def test_true_pairs_count_flips_both_ways():
    clean = np.array([1, 1, 9, 3, 3, 5, 0])
    given = np.array([9, 9, 1, 5, 3, 3, 0])
    pairs = true_pairs(given, clean, top=2)
    assert pairs == [((1, 9), 3), ((3, 5), 2)]
