"""What a model knows about its training labels, end to end through real processes
(tests/e2e/conftest.py: uvicorn + a Celery worker): a HET job with its softmax baseline
on a dataset whose labels were flipped on known rows, the same data uploaded again
with its rows shuffled, then the noise-free predictive, /noise and /label-issues.

Row indices are rows of each upload: mapped back through the permutation, the
shuffled upload's flagged rows are (nearly: another row order trains another model)
the original's, and both are the flipped rows.
"""

from __future__ import annotations

import numpy as np

from tests.support.e2e_jobs import (
    BLOBS_SPEC,
    D,
    K,
    blobs,
    submit,
    swap_ant_bee,
    upload,
    wait_for_status,
)

N = 240


def flagged_rows(client, model_id: str) -> tuple[dict, set[int]]:
    r = client.get(f"/v1/models/{model_id}/label-issues", params={"limit": N})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_examples"] == N and len(body["issues"]) == N  # every uploaded row
    assert sorted(i["index"] for i in body["issues"]) == list(range(N))
    scores = [i["score"] for i in body["issues"]]
    assert scores == sorted(scores, reverse=True)  # most likely mislabeled first
    flagged = {i["index"] for i in body["issues"] if i["flagged"]}
    assert body["num_flagged"] == len(flagged)
    return body, flagged


def test_noise_free_predict_noise_report_and_label_issues_of_a_shuffled_upload(stack):
    x, clean = blobs(N, 0)
    rng = np.random.default_rng(1)
    labels, flipped = swap_ant_bee(clean, N // 10, rng)
    x_test, y_test = blobs(60, 2)
    perm = rng.permutation(N)  # shuffled upload: its row i is original row perm[i]

    with stack.client() as client:
        original = upload(client, x_train=x, y_train=labels, x_test=x_test, y_test=y_test)
        shuffled = upload(
            client, x_train=x[perm], y_train=labels[perm], x_test=x_test, y_test=y_test
        )
        jobs = {
            "original": submit(client, original, BLOBS_SPEC, compare_baseline=True)["id"],
            "shuffled": submit(client, shuffled, BLOBS_SPEC)["id"],
        }
        done = {
            name: wait_for_status(client, job_id, {"succeeded", "failed"}, timeout=150)
            for name, job_id in jobs.items()
        }
        for name, job in done.items():
            assert job["status"] == "succeeded", (name, job["error"])
        model_id = done["original"]["model_id"]
        baseline_id = done["original"]["baseline_model_id"]

        # -- the model's metrics: both predictives, reliability diagrams ------------
        model = client.get(f"/v1/models/{model_id}").json()
        for name in ("accuracy", "nll", "ece", "brier"):
            assert np.isfinite(model["metrics"][f"noise_free_test_{name}"]), name
        diagram = model["metrics"]["reliability"]["noise_free"]
        assert sum(diagram["count"]) == 60 and len(diagram["bin_edges"]) == 16

        # -- predict with the noise-free predictive: model and baseline -------------
        centers = 4.0 * np.eye(D)[:K]
        for served in (model_id, baseline_id):
            r = client.post(
                f"/v1/models/{served}/predict",
                json={"inputs": centers.tolist(), "predictive": "noise_free", "seed": 1},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["predictive"] == "noise_free" and body["mc_samples"] == 0
            assert [p["label"] for p in body["predictions"]] == [0, 1, 2], model["metrics"]
            for p in body["predictions"]:
                assert abs(sum(p["probs"]) - 1) < 1e-5 and p["noise_free_probs"] == p["probs"]
                assert p["expected_entropy"] is None and p["prob_std"] is None

        # -- the noise report --------------------------------------------------------
        r = client.get(f"/v1/models/{model_id}/noise")
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["model_id"] == model_id and report["num_examples"] == N
        assert len(report["flip_matrix"]) == K and len(report["noise_std_by_class"]) == K
        assert report["class_pairs"][0]["classes"] == [0, 1]  # the injected confusion
        assert report["class_pairs"][0]["class_names"] == ["ant", "bee"]
        r = client.get(f"/v1/models/{baseline_id}/noise")
        assert r.status_code == 409 and "no noise model" in r.json()["detail"]

        # -- label issues: rows of each upload, the same rows through the permutation
        flips = set(flipped.tolist())
        found = {}
        for name, served, to_original in (
            ("original", model_id, lambda i: i),
            ("baseline", baseline_id, lambda i: i),
            ("shuffled", done["shuffled"]["model_id"], lambda i: int(perm[i])),
        ):
            body, flagged = flagged_rows(client, served)
            given = labels[perm] if name == "shuffled" else labels
            for issue in body["issues"]:  # the index is a row of that upload
                assert issue["given_label"] == given[issue["index"]]
            found[name] = {to_original(i) for i in flagged}
            hits = len(found[name] & flips)
            assert hits >= 0.8 * len(flips), (name, hits, len(found[name]))  # recall
            assert hits >= 0.7 * len(found[name]), (name, hits, len(found[name]))  # precision
        same = found["original"] & found["shuffled"]
        assert len(same) >= 0.8 * len(found["original"] | found["shuffled"])
        assert body["dataset_id"] == shuffled
