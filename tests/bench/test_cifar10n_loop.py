"""bench/cifar10n_loop.py's arithmetic: each head's change is measured against the same
head before, a softmax-only round (cleanlab's recipe) leaves the HET cells empty, and
the share of right labels counts only the rows a round keeps."""

from __future__ import annotations

import numpy as np

from bench.cifar10n_loop import label_quality, table


def loop(seed: int, before: dict, after: dict, softmax_only: dict) -> dict:
    return {
        "seed": seed,
        "labels_right_before": 0.6,
        "before": before,
        "rounds": {
            "hetserve relabel, every flagged row": {
                "rows_changed": 10,
                "flag_precision": 0.5,
                "relabel_precision": 0.4,
                "labels_right_after": 0.7,
                "test_accuracy": after,
                "wall_s": 1.0,
            },
            "cleanlab recipe": {
                "rows_changed": 8,
                "flag_precision": 0.75,
                "labels_right_after": 0.65,
                "test_accuracy": softmax_only,
                "wall_s": 1.0,
            },
        },
    }


def row(text: str, name: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_head_is_compared_with_itself_before():
    def heads(softmax, mc, noise_free):
        return {"softmax": softmax, "HET, MC predictive": mc, "HET, noise-free": noise_free}

    loops = [
        loop(0, heads(0.40, 0.30, 0.20), heads(0.45, 0.36, 0.20), {"softmax": 0.38}),
        loop(1, heads(0.42, 0.32, 0.22), heads(0.45, 0.36, 0.22), {"softmax": 0.44}),
    ]
    text = table(loops, "header")
    relabel = row(text, "hetserve relabel, every flagged row")
    # Δ softmax = mean(+0.05, +0.03), Δ HET MC = mean(+0.06, +0.04): never across heads
    assert relabel[-2].startswith("+0.040") and relabel[-1].startswith("+0.050")
    assert relabel[3].startswith("0.400")  # relabel precision
    cleanlab = row(text, "cleanlab recipe")
    assert cleanlab[3] == "—" and cleanlab[6] == "—" and cleanlab[-1] == "—"
    assert cleanlab[-2].startswith("+0.000")  # (−0.02 + 0.02) / 2
    assert row(text, "noisy (before)")[5].startswith("0.410")


def test_label_quality_counts_the_kept_rows_only():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 0, 0])
    kept = np.array([True, True, False, False])
    assert label_quality(kept, labels, clean) == 1.0
    assert label_quality(np.ones(4, dtype=bool), labels, clean) == 0.5
