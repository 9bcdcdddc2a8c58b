"""CIFAR-10N through the product, on a 2,000-image slice of the shared data: the tree
bench/cifar10n.py builds (hard links), registered by file:// URI, one short HET job,
its noise report, and label issues whose row indices map back to the right files.

Needs ``shared/data/cifar10n`` beside the repository (or $HETSERVE_CIFAR10N_DIR):
skipped, saying so, where it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cifar10n import (
    CLASS_NAMES,
    all_label_issues,
    build_tree,
    from_shared,
    shared_dir,
    stratified_subset,
)
from tests.support.service_stack import API_KEY

DATA = shared_dir()
pytestmark = pytest.mark.skipif(
    DATA is None,
    reason="no shared/data/cifar10n beside the repository (set HETSERVE_CIFAR10N_DIR)",
)
SPEC = {
    "head": {"kind": "het", "num_factors": 2, "temperature": 1.0,
             "train_mc_samples": 16, "eval_mc_samples": 32},
    "backbone": {"kind": "cnn", "augment": True, "hflip": True},
    "train": {"epochs": 1, "batch_size": 128, "device": "cpu", "seed": 0},
}  # fmt: skip


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_cifar10n_slice_trains_and_its_label_issues_name_the_right_files(stack, tmp_path_factory):
    from hetserve import Client

    refs = Path(stack.env["HETSERVE_DATASET_ROOTS"])
    # the cache beside the tree: a hard link needs one file system
    data = from_shared(DATA, refs.parent / "cifar10n-cache")
    worse = data.labels["worse"]
    rows = stratified_subset(worse, 2000, seed=0)
    test_labels = np.asarray([c for _, c in data.test_files])
    tree = build_tree(
        data, "worse", refs / "cifar10n", rows, stratified_subset(test_labels, 200, 0)
    )
    assert tree.files[0].stat().st_ino == data.train_files[tree.rows[0]].stat().st_ino
    assert tree.files[0].stat().st_nlink == 2

    with Client(f"http://127.0.0.1:{stack.port}", key=API_KEY) as client:
        dataset = client.register_dataset(tree.uri)
        assert dataset["format"] == "imagefolder" and dataset["class_names"] == list(CLASS_NAMES)
        assert dataset["num_train"] == 2000 and dataset["num_test"] == 200
        job = client.submit_job(SPEC, dataset_id=dataset["id"])
        job = client.wait(job["id"], timeout=240)
        assert job["status"] == "succeeded", job["error"]
        report = client.noise(job["model_id"])
        assert report["num_examples"] == 2000 and len(report["class_pairs"]) >= 6
        issues = all_label_issues(client, job["model_id"])  # pages of the API's most
        first = client.label_issues(job["model_id"], limit=3)["issues"]
        second = client.label_issues(job["model_id"], limit=3, offset=3)["issues"]

    np.testing.assert_array_equal(issues["given"], tree.given)
    assert 0 < issues["flagged"].sum() < 2000
    # The rows the API names, mapped back through the manifest the service stored:
    # row r is the tree's file r, and its given label is the label set's for that file.
    (manifest_path,) = stack.data_dir.rglob("*.manifest.json")
    paths = json.loads(manifest_path.read_text())["splits"]["train"]["paths"]
    for issue in first + second:
        r = issue["index"]
        assert paths[r] == str(tree.files[r].relative_to(tree.root))
        cifar_index = int(Path(paths[r]).stem)  # train/<class>/<i>.jpg
        assert cifar_index == tree.rows[r]
        assert issue["given_label"] == worse[cifar_index]
        assert Path(paths[r]).parent.name == CLASS_NAMES[worse[cifar_index]]
    assert [i["index"] for i in first + second] == [i["index"] for i in client_order(issues)[:6]]


def client_order(issues: dict) -> list[dict]:
    """Rows most suspect first (score descending, ties by row): the API's order."""
    order = np.lexsort((np.arange(len(issues["score"])), -issues["score"]))
    return [{"index": int(i)} for i in order]
