"""POST /v1/datasets/{id}/corrections[/from-model]: a corrected dataset from a model's
findings or an uploaded CSV, its lineage, and the 422s of bad corrections (nothing
written). In-process app, real SQLite store, real artifact files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from app import db
from app.artifacts import ArtifactStore
from app.store import JobStore, ModelStore
from core import label_issues_file
from core.dataset_files import load_dataset
from core.manifest import open_manifest
from tests.support.folder_datasets import image_folder
from tests.support.service_client import (
    AUTH,
    client_for,
    files_under,
    make_settings,
    npz_bytes,
    uploaded,
)

NAMES = ["cat", "dog", "fox"]
N = 12


def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    x[:, 0] = np.arange(N)  # row identity, to follow rows through a drop
    return {"x_train": x, "y_train": np.arange(N) % 3, "class_names": np.array(NAMES)}


def add_model(settings, dataset_id, suggested, scores, issues=True, given=None):
    """A model of ``dataset_id`` whose issues file says what the worker would have."""
    given = np.arange(len(scores)) % 3 if given is None else given
    path = None
    if issues:
        data = label_issues_file.encode(scores, suggested != given, given, suggested)
        path = ArtifactStore(settings.data_dir).put_bytes(data, ".issues.npz")[0]
    with db.session_scope(settings) as session:
        job = JobStore(session).create(dataset_id, {"head": {"kind": "het"}})
        model = ModelStore(session).register(
            job.id, "model", head="het", task="multiclass", input_shape=[4], num_classes=3,
            class_names=NAMES, metrics={}, onnx_path="none.onnx", onnx_sha256="0" * 64,
            label_issues_path=path,
        )  # fmt: skip
        return model.id


# rows 7, 4 and 10 are flagged, most suspect first (score 0.9, 0.8, 0.7)
SUGGESTED = np.arange(N) % 3
SUGGESTED[[4, 7, 10]] = [2, 0, 0]
SCORES = np.linspace(0.05, 0.3, N)
SCORES[[7, 4, 10]] = [0.9, 0.8, 0.7]


@pytest.fixture
def ctx(tmp_path):
    settings = make_settings(tmp_path / "data")
    with client_for(settings) as client:
        parent = uploaded(client, "pets.npz", arrays())
        model_id = add_model(settings, parent["id"], SUGGESTED, SCORES)
        yield client, settings, parent, model_id


def stored_dataset(settings, dataset):
    with db.session_scope(settings) as session:
        from app.store import DatasetStore

        row = DatasetStore(session).get(dataset["id"])
        return ArtifactStore(settings.data_dir).resolve(row.artifact_path)


def from_model(client, dataset_id, **body):
    return client.post(f"/v1/datasets/{dataset_id}/corrections/from-model", json=body, headers=AUTH)


def from_csv(client, dataset_id, text, name=None):
    data = {"name": name} if name else None
    files = {"file": ("fixes.csv", text.encode())}
    return client.post(
        f"/v1/datasets/{dataset_id}/corrections", files=files, data=data, headers=AUTH
    )


def test_relabel_the_top_n_flagged_rows(ctx):
    client, settings, parent, model_id = ctx
    r = from_model(client, parent["id"], model_id=model_id, action="relabel", top=2)
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["lineage"] == {
        "parent_dataset_id": parent["id"],
        "rule": "relabel",
        "model_id": model_id,
        "top": 2,
        "csv_sha256": None,
        "num_relabelled": 2,
        "num_dropped": 0,
    }
    assert child["num_train"] == N and child["class_names"] == NAMES
    assert "relabel top 2" in child["name"]
    data = load_dataset(stored_dataset(settings, child))
    expected = np.arange(N) % 3
    expected[[7, 4]] = [0, 2]  # the two most suspect flagged rows; row 10 stays
    assert data.y_train.tolist() == expected.tolist()
    np.testing.assert_array_equal(data.x_train, arrays()["x_train"])
    # The lineage is part of the dataset as GET and the list show it.
    assert (
        client.get(f"/v1/datasets/{child['id']}", headers=AUTH).json()["lineage"]
        == (child["lineage"])
    )
    assert client.get(f"/v1/datasets/{parent['id']}", headers=AUTH).json()["lineage"] is None


def test_drop_every_flagged_row(ctx):
    client, settings, parent, model_id = ctx
    r = from_model(client, parent["id"], model_id=model_id, action="drop", name="clean")
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["name"] == "clean" and child["num_train"] == N - 3
    assert child["lineage"]["num_dropped"] == 3 and child["lineage"]["top"] is None
    data = load_dataset(stored_dataset(settings, child))
    kept = [i for i in range(N) if i not in (4, 7, 10)]
    assert data.x_train[:, 0].astype(int).tolist() == kept
    assert data.y_train.tolist() == [i % 3 for i in kept]


def test_from_a_model_of_another_dataset_or_without_issues(ctx):
    client, settings, parent, _ = ctx
    r = client.post(
        "/v1/datasets", files={"file": ("other.npz", npz_bytes(**arrays()))}, headers=AUTH
    )
    other = add_model(settings, r.json()["id"], SUGGESTED, SCORES)
    r = from_model(client, parent["id"], model_id=other, action="drop")
    assert r.status_code == 422 and "was trained on dataset" in r.json()["detail"]
    bare = add_model(settings, parent["id"], SUGGESTED, SCORES, issues=False)
    r = from_model(client, parent["id"], model_id=bare, action="relabel")
    assert r.status_code == 409 and f"model {bare} has no label issue" in r.json()["detail"]
    r = from_model(client, parent["id"], model_id="nope", action="relabel")
    assert r.status_code == 404
    r = from_model(client, "nope", model_id=bare, action="relabel")
    assert r.status_code == 404
    r = from_model(client, parent["id"], model_id=bare, action="flip")
    assert r.status_code == 422


def test_csv_corrections_by_class_name_and_index(ctx):
    client, settings, parent, _ = ctx
    text = "index,label\n3,fox\n\n5,0\n"
    r = from_csv(client, parent["id"], text)
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["lineage"]["rule"] == "csv"
    assert child["lineage"]["csv_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert child["lineage"]["num_relabelled"] == 2 and child["lineage"]["model_id"] is None
    data = load_dataset(stored_dataset(settings, child))
    expected = np.arange(N) % 3
    expected[[3, 5]] = [2, 0]
    assert data.y_train.tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("index,label\n1,dog\n12,cat\n", "line 3: index 12 is out of range"),
        ("0,cat\n-1,cat\n", "line 2: index -1 is out of range"),
        ("0,3\n", "line 1: label '3' is neither a class name nor a class index in [0, 3)"),
        ("0,zebra\n", "line 1: label 'zebra' is neither a class name"),
        ("4,cat\n5,dog\n4,fox\n", "line 3: index 4 is corrected twice (first on line 1)"),
        ("0,cat,extra\n", "line 1: 3 fields, expected 2 (index,label)"),
        ("zero,cat\n", "line 1: index 'zero' is not a whole number"),
        ("index,class\n", "line 1: the header must be index,label"),
        ("index,label\n", "the CSV holds no corrections"),
        ('0,"cat\n', "line"),  # an unclosed quote
        (b"\xff\xfe0,cat".decode("latin-1"), "line 1"),
    ],
)
def test_bad_corrections_are_422_naming_the_row_and_write_nothing(ctx, text, detail):
    client, settings, parent, _ = ctx
    before = files_under(settings.data_dir / "artifacts")
    r = from_csv(client, parent["id"], text)
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]
    assert len(client.get("/v1/datasets", headers=AUTH).json()) == 1
    assert files_under(settings.data_dir / "artifacts") == before


def test_not_utf8_is_422(ctx):
    client, _, parent, _ = ctx
    r = client.post(
        f"/v1/datasets/{parent['id']}/corrections",
        files={"file": ("x.csv", b"\xff\xfe\x00")},
        headers=AUTH,
    )
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]


def test_dropping_all_but_one_class_is_422(ctx):
    client, settings, parent, _ = ctx
    suggested = np.zeros(N, dtype=int)
    model_id = add_model(settings, parent["id"], suggested, np.linspace(0.1, 0.9, N))
    r = from_model(client, parent["id"], model_id=model_id, action="drop")
    assert r.status_code == 422 and "fewer than 2 classes" in r.json()["detail"]


def test_auth_is_required(ctx):
    client, _, parent, model_id = ctx
    url = f"/v1/datasets/{parent['id']}/corrections"
    assert client.post(url, files={"file": ("x.csv", b"0,cat\n")}).status_code == 401
    r = client.post(f"{url}/from-model", json={"model_id": model_id, "action": "drop"})
    assert r.status_code == 401


def test_an_image_folder_child_is_a_manifest_of_the_same_files(tmp_path):
    allowed = tmp_path / "allowed"
    folder = image_folder(allowed / "pets")
    settings = make_settings(tmp_path / "data", dataset_roots=str(allowed))
    with client_for(settings) as client:
        r = client.post("/v1/datasets", json={"uri": f"file://{folder}"}, headers=AUTH)
        assert r.status_code == 201, r.text
        parent = r.json()  # train/{cat,dog,fox}/{0,1,2}.png: rows 0-2 cat, 3-5 dog, 6-8 fox
        r = from_csv(client, parent["id"], "0,dog\n")
        assert r.status_code == 201, r.text
        relabelled = r.json()
        assert relabelled["format"] == "imagefolder" and relabelled["num_train"] == 9
        given = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
        suggested = given.copy()
        suggested[[1, 8]] = [2, 0]
        scores = np.linspace(0.1, 0.5, 9)
        model_id = add_model(settings, parent["id"], suggested, scores, given=given)
        # The export names each row's file, so annotators can open it.
        r = client.get(
            f"/v1/models/{model_id}/label-issues",
            params={"format": "csv", "flagged": "true"},
            headers=AUTH,
        )
        lines = r.text.splitlines()
        assert lines[1] == f"8,{folder}/train/fox/2.png,2,fox,0,cat,0.5,true", lines
        assert lines[2].startswith(f"1,{folder}/train/cat/1.png,0,cat,2,fox,0.15")
        r = from_model(client, parent["id"], model_id=model_id, action="drop")
        assert r.status_code == 201, r.text
        dropped = r.json()
        assert dropped["num_train"] == 7 and dropped["num_test"] == parent["num_test"]
    files = files_under(settings.data_dir / "artifacts")
    assert not [f for f in files if f.suffix == ".png"]  # no image copied
    manifest = json.loads(stored_dataset(settings, relabelled).read_text())
    data = open_manifest(manifest)  # what the worker trains on, checked against the files
    assert data.y_train.tolist() == [1, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.x_train.paths[0] == "train/cat/0.png"
    data = open_manifest(json.loads(stored_dataset(settings, dropped).read_text()))
    assert "train/cat/1.png" not in data.x_train.paths and len(data.x_train) == 7
    assert data.y_train.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert data.x_train[0:2].shape == (2, 3, 32, 32)


def test_the_cli_corrects_and_shows_the_lineage(ctx, tmp_path, monkeypatch, capsys):
    import hetserve
    from app import cli
    from app.cli import connect

    client, _, parent, model_id = ctx
    monkeypatch.setattr(
        connect,
        "Client",
        lambda url, key, **kw: hetserve.Client(url, key, transport=client._transport),
    )
    common = ["--url", "http://testserver", "--key", AUTH["Authorization"].split()[1]]
    argv = ["datasets", "correct", parent["id"], "--from-model", model_id, "--top", "1"]
    assert cli.main([*argv, "-q", *common]) == 0
    child_id = capsys.readouterr().out.strip()
    assert cli.main(["datasets", "show", child_id, *common]) == 0
    out = capsys.readouterr().out
    assert f"lineage  from dataset {parent['id']}: relabel top 1 flagged of model {model_id}" in (
        out
    )
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("index,label\n2,cat\n")
    assert cli.main(["datasets", "correct", parent["id"], "--csv", str(fixes), *common]) == 0
    out = capsys.readouterr().out
    assert "corrections CSV sha256" in out and "(1 relabelled, 0 dropped)" in out
    fixes.write_text("2,cat\n2,dog\n")
    assert cli.main(["datasets", "correct", parent["id"], "--csv", str(fixes), *common]) == 1
    assert "line 2: index 2 is corrected twice" in capsys.readouterr().err
