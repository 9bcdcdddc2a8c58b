"""GET /v1/datasets/{id}/items/{index}: one training example as a PNG or JSON; auth,
out-of-range 404, and a file by reference that changed since registration refused."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.support.folder_datasets import COLORS, image_folder
from tests.support.service_client import (
    AUTH,
    client_for,
    make_settings,
    npz_bytes,
    png_bytes,
    zip_bytes,
)


@pytest.fixture
def ctx(tmp_path):
    allowed = tmp_path / "allowed"
    folder = image_folder(allowed / "pets")
    settings = make_settings(tmp_path / "data", dataset_roots=str(allowed))
    with client_for(settings) as client:
        yield client, folder


def upload(client, name, data):
    r = client.post("/v1/datasets", files={"file": (name, data)}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def item(client, dataset_id, index, **params):
    return client.get(f"/v1/datasets/{dataset_id}/items/{index}", params=params, headers=AUTH)


def decoded(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_a_vector_row_as_json(ctx):
    client, _ = ctx
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    d = upload(client, "t.npz", npz_bytes(x_train=x, y_train=np.array([0, 1, 1, 0])))
    r = item(client, d["id"], 2)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "dataset_id": d["id"],
        "index": 2,
        "label": 1,
        "label_names": ["1"],
        "file": None,
        "values": [6.0, 7.0, 8.0],
        "shape": [3],
    }
    r = item(client, d["id"], 0, format="png")
    assert r.status_code == 422 and "format=json" in r.json()["detail"]


@pytest.mark.parametrize("index", ["4", "-1", "99999999999"])
def test_out_of_range_index_is_404(ctx, index):
    client, _ = ctx
    x = np.zeros((4, 3), np.float32)
    d = upload(client, "t.npz", npz_bytes(x_train=x, y_train=np.array([0, 1, 1, 0])))
    r = client.get(f"/v1/datasets/{d['id']}/items/{index}", headers=AUTH)
    assert r.status_code == 404 and "no training row" in r.json()["detail"]
    assert client.get("/v1/datasets/nope/items/0", headers=AUTH).status_code == 404


def test_auth_is_required(ctx):
    client, _ = ctx
    x = np.zeros((4, 3), np.float32)
    d = upload(client, "t.npz", npz_bytes(x_train=x, y_train=np.array([0, 1, 1, 0])))
    assert client.get(f"/v1/datasets/{d['id']}/items/0").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.get(f"/v1/datasets/{d['id']}/items/0", headers=bad).status_code == 401


def test_an_uploaded_image_as_png(ctx):
    client, _ = ctx
    entries = {
        f"train/{name}/{i}.png": png_bytes(color, size=8)
        for name, color in COLORS.items()
        for i in range(2)
    }
    d = upload(client, "pets.zip", zip_bytes(entries))
    pixels = decoded(item(client, d["id"], 2))  # train/dog/0.png
    assert pixels.shape == (32, 32, 3)
    assert np.abs(pixels.reshape(-1, 3).mean(0) - COLORS["dog"]).max() <= 2
    r = item(client, d["id"], 2, format="json")
    assert r.json()["label_names"] == ["dog"] and r.json()["shape"] == [3, 32, 32]
    assert r.json()["values"] is None


def test_an_image_by_reference_and_a_changed_file_refused(ctx):
    client, folder = ctx
    r = client.post(
        "/v1/datasets", json={"uri": f"file://{folder}", "image_size": 16}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    d = r.json()
    pixels = decoded(item(client, d["id"], 7))  # train/fox/1.png
    assert pixels.shape == (16, 16, 3)
    assert np.abs(pixels.reshape(-1, 3).mean(0) - COLORS["fox"]).max() <= 2
    r = item(client, d["id"], 7, format="json")
    assert r.json()["file"] == f"{folder}/train/fox/1.png" and r.json()["label"] == 2
    # The file changes after registration: refused, by name, as training would refuse it.
    changed = folder / "train" / "fox" / "1.png"
    changed.write_bytes(png_bytes((0, 0, 0), size=13))
    os.utime(changed, ns=(1, 1))
    r = item(client, d["id"], 7)
    assert r.status_code == 409, r.text
    assert "train/fox/1.png" in r.json()["detail"] and "changed" in r.json()["detail"]
    assert decoded(item(client, d["id"], 6)).shape == (16, 16, 3)  # the others still show
    changed.unlink()
    r = item(client, d["id"], 7)
    assert r.status_code == 409 and "missing" in r.json()["detail"]


def test_a_corrected_dataset_shows_its_corrected_label(ctx):
    client, folder = ctx
    r = client.post("/v1/datasets", json={"uri": f"file://{folder}"}, headers=AUTH)
    parent = r.json()
    r = client.post(
        f"/v1/datasets/{parent['id']}/corrections",
        files={"file": ("c.csv", b"index,label\n0,fox\n")},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    child = r.json()
    assert item(client, child["id"], 0, format="json").json()["label_names"] == ["fox"]
    assert item(client, parent["id"], 0, format="json").json()["label_names"] == ["cat"]
    assert decoded(item(client, child["id"], 0)).shape == (32, 32, 3)


def test_a_dataset_whose_file_is_gone_is_404_not_500(ctx, tmp_path):
    client, _ = ctx
    x = np.zeros((4, 3), np.float32)
    d = upload(client, "t.npz", npz_bytes(x_train=x, y_train=np.array([0, 1, 1, 0])))
    data_dir = client.app.state.settings.data_dir
    for stored in (data_dir / "artifacts").rglob("*.npz"):
        stored.unlink()
    r = item(client, d["id"], 0)
    assert r.status_code == 404 and "missing from the artifact store" in r.json()["detail"]
    r = client.post(
        f"/v1/datasets/{d['id']}/corrections", files={"file": ("c.csv", b"0,1\n")}, headers=AUTH
    )
    assert r.status_code == 404 and "missing from the artifact store" in r.json()["detail"]


def test_a_row_of_an_npz_by_reference_and_the_file_changed(ctx):
    client, folder = ctx
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    path = folder.parent / "rows.npz"
    path.write_bytes(npz_bytes(x_train=x, y_train=np.array([0, 1, 0, 1, 1])))
    r = client.post("/v1/datasets", json={"uri": f"file://{path}"}, headers=AUTH)
    assert r.status_code == 201, r.text
    d = r.json()
    body = item(client, d["id"], 3).json()
    assert body["values"] == [12.0, 13.0, 14.0, 15.0] and body["label"] == 1
    path.write_bytes(npz_bytes(x_train=x + 1, y_train=np.array([0, 1, 0, 1, 1])))
    os.utime(path, ns=(1, 1))
    r = item(client, d["id"], 3)
    assert r.status_code == 409 and "rows.npz" in r.json()["detail"]
