"""GET /v1/models/{id}/noise and /label-issues over rows the worker would have stored
(in-process app, real SQLite store, real artifact files)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import db
from app.artifacts import ArtifactStore
from app.main import create_app
from app.store import DatasetStore, JobStore, ModelStore
from core import label_issues_file
from tests.support.service_client import AUTH, make_settings

NAMES = ["cat", "dog", "fox"]
REPORT = {
    "num_examples": 6,
    "class_pairs": [
        {"classes": [0, 1], "flip_rate": 0.2, "correlation": -0.5},
        {"classes": [1, 2], "flip_rate": 0.05, "correlation": 0.1},
        {"classes": [0, 2], "flip_rate": 0.0, "correlation": 0.0},
    ],
    "flip_matrix": [[0.0, 0.3, 0.0], [0.1, 0.0, 0.05], [0.0, 0.05, 0.0]],
    "noise_std_by_class": [1.0, 1.5, 0.5],
}
SCORES = np.array([0.1, 0.8, 0.3, 0.95, 0.2, 0.6])
GIVEN = np.array([0, 1, 2, 0, 1, 2])
SUGGESTED = np.array([0, 0, 2, 1, 1, 1])


def add_model(settings, role="model", head="het", task="multiclass", report=None, issues=True):
    artifacts = ArtifactStore(settings.data_dir)
    issues_path = None
    if issues:
        data = label_issues_file.encode(SCORES, SUGGESTED != GIVEN, GIVEN, SUGGESTED)
        issues_path = artifacts.put_bytes(data, ".issues.npz")[0]
    with db.session_scope(settings) as session:
        dataset = DatasetStore(session).add(
            name="d", format="npz", task=task, num_train=6, input_shape=[2], num_classes=3,
            class_names=NAMES, sha256="0" * 64, size_bytes=1, artifact_path="none",
        )  # fmt: skip
        job = JobStore(session).create(dataset.id, {"head": {"kind": head}})
        model = ModelStore(session).register(
            job.id, role, head=head, task=task, input_shape=[2], num_classes=3,
            class_names=NAMES, metrics={}, onnx_path="none.onnx", onnx_sha256="0" * 64,
            noise_report=report, label_issues_path=issues_path,
        )  # fmt: skip
        return model.id, dataset.id


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("noise"))
    db.migrate(settings)
    ids = {
        "het": add_model(settings, report=REPORT),
        "baseline": add_model(settings, role="baseline", head="softmax"),
        "multilabel": add_model(settings, task="multilabel", issues=False),
        "old": add_model(settings, issues=False),
        "no_noise": add_model(settings, report={"unavailable": "the latent covariance is zero"}),
    }
    with db.session_scope(settings) as session:
        ModelStore(session).set_alias("prod", ids["het"][0])
    with TestClient(create_app(settings)) as client:
        yield client, ids, settings


def test_auth_is_required(ctx):
    client, ids, _ = ctx
    model_id = ids["het"][0]
    for path in (f"/v1/models/{model_id}/noise", f"/v1/models/{model_id}/label-issues"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_unknown_model_is_404(ctx):
    client, _, _ = ctx
    for path in ("/v1/models/nope/noise", "/v1/models/nope/label-issues"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_noise_report_by_id_and_alias(ctx):
    client, ids, _ = ctx
    model_id = ids["het"][0]
    for ref in (model_id, "prod"):
        r = client.get(f"/v1/models/{ref}/noise", headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body == {
            "model_id": model_id,
            "num_examples": 6,
            "class_pairs": [
                {**pair, "class_names": [NAMES[i] for i in pair["classes"]]}
                for pair in REPORT["class_pairs"]
            ],
            "flip_matrix": REPORT["flip_matrix"],
            "noise_std_by_class": REPORT["noise_std_by_class"],
        }
        assert body["class_pairs"][0]["class_names"] == ["cat", "dog"]


def test_label_issues_most_suspect_first_with_limit(ctx):
    client, ids, _ = ctx
    model_id, dataset_id = ids["het"]
    r = client.get("/v1/models/prod/label-issues", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == model_id and body["dataset_id"] == dataset_id
    assert body["num_examples"] == 6 and body["num_flagged"] == 3
    order = np.argsort(-SCORES, kind="stable")
    assert [i["index"] for i in body["issues"]] == order.tolist()
    first = body["issues"][0]
    assert first == {
        "index": 3,
        "given_label": 0,
        "given_name": "cat",
        "suggested_label": 1,
        "suggested_name": "dog",
        "score": 0.95,
        "flagged": True,
    }
    r = client.get(f"/v1/models/{model_id}/label-issues", params={"limit": 2}, headers=AUTH)
    assert [i["index"] for i in r.json()["issues"]] == [3, 1]
    assert r.json()["num_flagged"] == 3  # of the whole set, not of the page


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "many", "1.5"])
def test_bad_limit_is_422(ctx, limit):
    client, ids, _ = ctx
    r = client.get(
        f"/v1/models/{ids['het'][0]}/label-issues", params={"limit": limit}, headers=AUTH
    )
    assert r.status_code == 422, r.text


def test_baseline_has_no_noise_report_but_label_issues(ctx):
    client, ids, _ = ctx
    model_id = ids["baseline"][0]
    r = client.get(f"/v1/models/{model_id}/noise", headers=AUTH)
    assert r.status_code == 409
    assert "a softmax baseline has no noise model" in r.json()["detail"]
    r = client.get(f"/v1/models/{model_id}/label-issues", headers=AUTH)
    assert r.status_code == 200 and r.json()["num_examples"] == 6


def test_multilabel_old_and_noiseless_models_are_409_with_the_reason(ctx):
    client, ids, _ = ctx
    multilabel, old, no_noise = ids["multilabel"][0], ids["old"][0], ids["no_noise"][0]
    for what in ("noise", "label-issues"):
        r = client.get(f"/v1/models/{multilabel}/{what}", headers=AUTH)
        assert r.status_code == 409 and "multiclass models only" in r.json()["detail"]
        r = client.get(f"/v1/models/{old}/{what}", headers=AUTH)
        assert r.status_code == 409 and "trained before" in r.json()["detail"]
    r = client.get(f"/v1/models/{no_noise}/noise", headers=AUTH)
    assert r.status_code == 409 and "covariance is zero" in r.json()["detail"]


def test_a_missing_label_issues_file_is_404(ctx, tmp_path):
    client, _, settings = ctx
    model_id, _ = add_model(settings, report=REPORT)
    with db.session_scope(settings) as session:
        ModelStore(session).get(model_id).label_issues_path = "artifacts/00/gone.issues.npz"
    r = client.get(f"/v1/models/{model_id}/label-issues", headers=AUTH)
    assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_label_issues_carry_class_names_and_page_through_the_flagged(ctx):
    client, ids, _ = ctx
    model_id = ids["het"][0]
    url = f"/v1/models/{model_id}/label-issues"
    flagged_order = [i for i in np.argsort(-SCORES, kind="stable") if SUGGESTED[i] != GIVEN[i]]
    pages = []
    for offset in (0, 2):
        r = client.get(url, params={"flagged": "true", "limit": 2, "offset": offset}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["num_matching"] == 3 and body["offset"] == offset
        pages += body["issues"]
    assert [i["index"] for i in pages] == flagged_order == [3, 1, 5]
    assert pages[0]["given_name"] == "cat" and pages[0]["suggested_name"] == "dog"
    assert all(i["flagged"] for i in pages)


def test_label_issues_filter_by_class_pair(ctx):
    client, ids, _ = ctx
    url = f"/v1/models/{ids['het'][0]}/label-issues"
    r = client.get(url, params={"given": 2, "suggested": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [i["index"] for i in r.json()["issues"]] == [5] and r.json()["num_matching"] == 1
    r = client.get(url, params={"given": 1, "suggested": 1}, headers=AUTH)
    assert [i["index"] for i in r.json()["issues"]] == [4]  # agreed rows too, unless flagged
    r = client.get(url, params={"given": 3}, headers=AUTH)
    assert r.status_code == 422 and "given=3" in r.json()["detail"]


def test_label_issues_as_csv_with_class_names(ctx):
    client, ids, _ = ctx
    model_id = ids["het"][0]
    r = client.get(f"/v1/models/{model_id}/label-issues", params={"format": "csv"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert f"label-issues-{model_id}.csv" in r.headers["content-disposition"]
    lines = r.text.splitlines()
    assert lines[0] == "index,file,given,given_name,suggested,suggested_name,score,flagged"
    assert len(lines) == 1 + 6  # every row: csv has no default limit
    assert lines[1] == "3,,0,cat,1,dog,0.95,true"
    assert lines[-1] == "0,,0,cat,0,cat,0.1,false"
    r = client.get(
        f"/v1/models/{model_id}/label-issues",
        params={"format": "csv", "flagged": "true", "limit": 20000},
        headers=AUTH,
    )
    assert [line.split(",")[0] for line in r.text.splitlines()[1:]] == ["3", "1", "5"]


def test_the_cli_saves_the_label_issues_as_csv(ctx, tmp_path, monkeypatch, capsys):
    import hetserve
    from app import cli
    from app.cli import connect

    client, ids, _ = ctx
    monkeypatch.setattr(
        connect,
        "Client",
        lambda url, key, **kw: hetserve.Client(url, key, transport=client._transport),
    )
    out = tmp_path / "issues.csv"
    argv = ["models", "label-issues", "prod", "--csv", str(out), "--url", "http://testserver"]
    assert cli.main([*argv, "--key", AUTH["Authorization"].split()[1]]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("index,file,given,given_name") and len(lines) == 1 + 3
    assert lines[1].startswith("3,,0,cat,1,dog,")
    assert cli.main([*argv, "--all", "--limit", "2", "--key", "test-key-0123456789"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 2
