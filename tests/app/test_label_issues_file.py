"""core/label_issues_file.py: the label-issues artifact, written and read back in part."""

from __future__ import annotations

import numpy as np

from core import label_issues_file


def test_sorted_most_suspect_first_deterministic_and_read_in_part(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    scores = rng.uniform(size=n)
    scores[[10, 20]] = 0.99  # a tie: broken by row
    given, suggested = rng.integers(0, 5, n), rng.integers(0, 5, n)
    flagged = given != suggested
    data = label_issues_file.encode(scores, flagged, given, suggested)
    assert data == label_issues_file.encode(scores, flagged, given, suggested)  # same bytes
    path = tmp_path / "x.issues.npz"
    path.write_bytes(data)
    arrays = np.load(path)  # an ordinary .npz
    order = np.lexsort((np.arange(n), -scores))
    np.testing.assert_array_equal(arrays["index"], order)
    np.testing.assert_array_equal(arrays["given"], given[order])
    np.testing.assert_array_equal(arrays["suggested"], suggested[order])
    np.testing.assert_array_equal(arrays["flagged"], flagged[order])

    head = label_issues_file.read_head(path, 5)
    assert head["num_examples"] == n and head["num_flagged"] == int(flagged.sum())
    assert [i["index"] for i in head["issues"]] == order[:5].tolist()
    first = head["issues"][0]
    assert first["score"] == scores[order[0]] and first["given_label"] == given[order[0]]
    assert first["flagged"] == bool(flagged[order[0]])
    assert len(label_issues_file.read_head(path, 5000)["issues"]) == n
    # pages of 300 from offset 0, 300, ... put together are the whole order
    pages = [label_issues_file.read_head(path, 300, offset) for offset in range(0, n + 300, 300)]
    assert [i["index"] for p in pages for i in p["issues"]] == order.tolist()
    assert [i["flagged"] for p in pages for i in p["issues"]] == flagged[order].tolist()
    assert pages[-1]["issues"] == [] and pages[-1]["num_flagged"] == int(flagged.sum())


def test_an_empty_training_set_reads_back_empty(tmp_path):
    path = tmp_path / "e.issues.npz"
    path.write_bytes(label_issues_file.encode([], [], [], []))
    assert label_issues_file.read_head(path, 10) == {
        "num_examples": 0,
        "num_flagged": 0,
        "issues": [],
    }
