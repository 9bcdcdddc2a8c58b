"""A small dataset file of Gaussian blobs and a fast training spec, for the tests that
upload a file and train on it (the CLI, the client)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def blobs_npz(path: Path, seed: int = 0) -> Path:
    """3 well-separated Gaussian classes in 4 dimensions: train/val/test 90/30/30."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(3, 4)

    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 4))).astype(np.float32), y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(90), split(30), split(30)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test, class_names=np.array(["a", "b", "c"]))  # fmt: skip
    return path


FAST_TRAIN = {
    "head": {"kind": "het", "num_factors": 2, "temperature": 1.0, "train_mc_samples": 8,
             "eval_mc_samples": 16},
    "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
}  # fmt: skip
