"""From finding to fixing, end to end through real processes (tests/e2e/conftest.py:
uvicorn + a Celery worker): train on labels flipped on known rows, export the flagged
rows as CSV, make a dataset that relabels them to the model's suggestion, retrain on it.

The corrected dataset is the parent's rows with the flagged rows' labels replaced, and
trains like any other; its lineage names the parent, the model and the rule.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from tests.support.e2e_jobs import BLOBS_SPEC, blobs, submit, swap_ant_bee, upload, wait_for_status

N = 240


def test_flag_relabel_retrain(stack):
    x, clean = blobs(N, 0)
    rng = np.random.default_rng(1)
    labels, flipped = swap_ant_bee(clean, N // 8, rng)
    x_test, y_test = blobs(60, 2)

    with stack.client() as client:
        noisy = upload(client, x_train=x, y_train=labels, x_test=x_test, y_test=y_test)
        job = wait_for_status(
            client, submit(client, noisy, BLOBS_SPEC)["id"], {"succeeded", "failed"}, 180
        )
        assert job["status"] == "succeeded", job["error"]
        model_id = job["model_id"]

        # -- flag: the flagged rows as CSV, class names and all ------------------------
        r = client.get(
            f"/v1/models/{model_id}/label-issues", params={"format": "csv", "flagged": "true"}
        )
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.text)))
        flagged = {int(row["index"]) for row in rows}
        assert len(flagged & set(flipped.tolist())) >= 0.8 * len(flipped)
        assert {row["given_name"] for row in rows} <= {"ant", "bee", "cow"}

        # -- relabel: every flagged row gets the model's suggestion --------------------
        r = client.post(
            f"/v1/datasets/{noisy}/corrections/from-model",
            json={"model_id": model_id, "action": "relabel"},
        )
        assert r.status_code == 201, r.text
        fixed = r.json()
        assert fixed["lineage"]["parent_dataset_id"] == noisy
        assert fixed["lineage"]["model_id"] == model_id and fixed["lineage"]["rule"] == "relabel"
        assert fixed["lineage"]["num_relabelled"] == len(flagged)

        # -- retrain on the corrected labels: fewer flips left to find -----------------
        job = wait_for_status(
            client, submit(client, fixed["id"], BLOBS_SPEC)["id"], {"succeeded", "failed"}, 180
        )
        assert job["status"] == "succeeded", job["error"]
        assert job["dataset_id"] == fixed["id"]
        r = client.get(f"/v1/models/{job['model_id']}/label-issues", params={"limit": N})
        issues = r.json()["issues"]
        corrected = {i["index"]: i["given_label"] for i in issues}
        suggested = {int(row["index"]): int(row["suggested"]) for row in rows}
        assert all(corrected[i] == label for i, label in suggested.items())  # trained on them
        wrong = sum(corrected[i] != clean[i] for i in range(N))
        assert wrong < len(flipped) / 2, (wrong, len(flipped))
        assert r.json()["num_flagged"] < len(flagged)
