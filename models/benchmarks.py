"""Datasets with input-dependent, correlated label noise (docs/models.md, "Benchmarks").

Training and validation labels are corrupted; test labels stay clean, so a model is
scored on how well it recovers the true classes despite the noise.

- ``noisy_digits``: sklearn's 8x8 digits. The pairs (0,2), (1,7), (3,8), (4,9), (5,6)
  are swapped with a probability that grows with the ink in the image, from 0 for the
  lightest to 50 % for the heaviest (by rank of total ink).
- ``noisy_blobs``: Gaussian classes in pairs whose partners overlap; a label flips to
  its partner with a probability that grows along one direction of x (0 to 50 %).
"""

from __future__ import annotations

import numpy as np

from core.dataset_files import ArrayDataset, validate

DIGIT_PAIRS = ((0, 2), (1, 7), (3, 8), (4, 9), (5, 6))
MAX_FLIP = 0.5


def partner_of(pairs, num_classes: int) -> np.ndarray:
    partner = np.arange(num_classes)
    for a, b in pairs:
        partner[a], partner[b] = b, a
    return partner


def flip_labels(
    y: np.ndarray, rate: np.ndarray, partner: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """y_i becomes partner[y_i] with probability rate_i."""
    return np.where(rng.random(len(y)) < rate, partner[y], y)


def rank_rate(score: np.ndarray, max_rate: float = MAX_FLIP) -> np.ndarray:
    """max_rate * (rank of score) / (N - 1): 0 for the smallest score, max_rate for the largest."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return max_rate * ranks / max(len(score) - 1, 1)


def noisy_digits(seed: int = 0, test_fraction: float = 0.3) -> ArrayDataset:
    """sklearn digits (1797 images, 64 pixels 0..16) with ink-dependent pair swaps."""
    from sklearn.datasets import load_digits  # lazily: only the benchmark needs sklearn

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    rate = rank_rate(x[train].sum(1))
    y_noisy = flip_labels(y[train], rate, partner_of(DIGIT_PAIRS, 10), rng)
    return validate(
        ArrayDataset(
            x[train],
            y_noisy,
            x_test=x[test],
            y_test=y[test],
            class_names=[str(i) for i in range(10)],
        )
    )


def noisy_blobs(
    seed: int = 0, num_pairs: int = 4, dim: int = 16, num_train: int = 3000, num_test: int = 3000
) -> ArrayDataset:
    """2 * num_pairs Gaussian classes; partners' means are close, so their inputs overlap.

    A label flips to its partner with probability 0.5 * sigmoid(3 * w.x) for a fixed
    unit direction w: the noise depends on x and is confined to the pairs.
    """
    rng = np.random.default_rng(seed)
    k = 2 * num_pairs
    first = rng.normal(0.0, 2.0, size=(num_pairs, dim))
    means = np.repeat(first, 2, axis=0)
    means[1::2] += rng.normal(0.0, 0.6, size=(num_pairs, dim))  # partner: a small offset
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    pairs = [(2 * i, 2 * i + 1) for i in range(num_pairs)]

    def draw(n):
        y = rng.integers(0, k, n)
        return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y

    x, y = draw(num_train)
    x_test, y_test = draw(num_test)
    centred = (x - x.mean(0)) @ direction
    rate = MAX_FLIP / (1 + np.exp(-3.0 * centred / centred.std()))
    y_noisy = flip_labels(y, rate, partner_of(pairs, k), rng)
    return validate(ArrayDataset(x, y_noisy, x_test=x_test, y_test=y_test))


def main(argv: list[str] | None = None) -> None:
    """``python -m models.benchmarks noisy_digits OUT.npz --seed 0``: save a benchmark
    dataset as an uploadable .npz (the CLI's demo runs this in a child interpreter)."""
    import argparse

    from core.dataset_files import save_npz

    parser = argparse.ArgumentParser(prog="python -m models.benchmarks")
    parser.add_argument("name", choices=["noisy_digits", "noisy_blobs"])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make = noisy_digits if args.name == "noisy_digits" else noisy_blobs
    save_npz(make(seed=args.seed), args.out)


if __name__ == "__main__":
    main()
