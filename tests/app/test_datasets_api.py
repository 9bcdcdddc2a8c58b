"""POST/GET/DELETE /v1/datasets in-process: formats, validation, limits, auth.

Every rejected upload must leave nothing behind: no dataset row, no artifact file.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from tests.support.service_client import (
    AUTH,
    client_for,
    files_under,
    make_settings,
    npz_bytes,
    png_bytes,
    tiny_arrays,
    zip_bytes,
)

MAX_UPLOAD = 64 * 1024


@pytest.fixture
def service(tmp_path):
    settings = make_settings(tmp_path / "data", max_upload_bytes=MAX_UPLOAD)
    with client_for(settings) as client:
        yield client, settings


def upload(client, name: str, data: bytes, headers=AUTH, **form):
    return client.post("/v1/datasets", files={"file": (name, data)}, data=form, headers=headers)


def assert_nothing_written(client, settings):
    assert client.get("/v1/datasets", headers=AUTH).json() == []
    assert files_under(settings.data_dir / "artifacts") == []


def test_npz_upload_roundtrip_and_delete(service):
    client, settings = service
    arrays = tiny_arrays(n=40, k=3)
    arrays |= {"x_test": arrays["x_train"][:5], "y_test": arrays["y_train"][:5]}
    r = upload(client, "tiny.npz", npz_bytes(**arrays, class_names=np.array(["a", "b", "c"])))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["num_train"], ds["num_val"], ds["num_test"]) == (40, 0, 5)
    assert (
        ds["input_shape"] == [3] and ds["num_classes"] == 3 and ds["class_names"] == ["a", "b", "c"]
    )
    assert ds["task"] == "multiclass" and len(ds["sha256"]) == 64
    assert client.get(f"/v1/datasets/{ds['id']}", headers=AUTH).json() == ds
    assert [d["id"] for d in client.get("/v1/datasets", headers=AUTH).json()] == [ds["id"]]

    # The stored artifact is the canonical .npz, loadable without pickle.
    (stored,) = files_under(settings.data_dir / "artifacts")
    with np.load(stored, allow_pickle=False) as npz:
        assert npz["x_train"].dtype == np.float32 and npz["y_train"].dtype == np.int64
        np.testing.assert_array_equal(npz["y_train"], arrays["y_train"])

    assert client.delete(f"/v1/datasets/{ds['id']}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}", headers=AUTH).status_code == 404
    assert_nothing_written(client, settings)


def test_csv_with_named_labels(service):
    client, _ = service
    csv = "f1,label,f2\n0.5,cat,1\n1.5,dog,2\n-0.5,cat,3\n"
    r = upload(client, "pets.csv", csv.encode())
    assert r.status_code == 201, r.text
    assert r.json()["class_names"] == ["cat", "dog"] and r.json()["input_shape"] == [2]


def test_image_zip_is_decoded_to_the_requested_size(service):
    client, _ = service
    entries = {
        f"mydata/{split}/{cls}/{i}.png": png_bytes(color)
        for split, count in (("train", 3), ("test", 1))
        for cls, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255)))
        for i in range(count)
    }
    r = upload(client, "images.zip", zip_bytes(entries), image_size="8")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["input_shape"] == [3, 8, 8] and ds["class_names"] == ["blue", "red"]
    assert (ds["num_train"], ds["num_test"]) == (6, 2)


def pickled_npz() -> bytes:
    arrays = tiny_arrays()
    return npz_bytes(x_train=arrays["x_train"], y_train=np.array([{"evil": 1}] * 40, dtype=object))


def corrupt_deflated_zip() -> bytes:
    """A zip whose second image's deflate stream is garbage (zlib.error, not BadZipFile)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/a/1.png", png_bytes((0, 0, 0)))
        archive.writestr("train/b/1.png", png_bytes((9, 9, 9)))
        offset = archive.getinfo("train/b/1.png").header_offset
    data = bytearray(buffer.getvalue())
    start = offset + 30 + len("train/b/1.png")
    data[start : start + 8] = b"\xff" * 8
    return bytes(data)


BAD_UPLOADS = {
    "pickle": ("p.npz", pickled_npz(), "pickle"),
    "mismatched lengths": (
        "m.npz",
        npz_bytes(x_train=np.zeros((10, 2)), y_train=np.arange(9) % 2),
        "mismatched",
    ),
    "label out of range": (
        "r.npz",
        npz_bytes(
            x_train=np.zeros((4, 2)),
            y_train=np.array([0, 1, 2, 1]),
            class_names=np.array(["a", "b"]),
        ),
        "out of range",
    ),
    "negative label": (
        "n.npz",
        npz_bytes(x_train=np.zeros((4, 2)), y_train=np.array([0, 1, -1, 1])),
        "negative",
    ),
    "NaN": (
        "nan.npz",
        npz_bytes(x_train=np.array([[0.0, 1.0], [np.nan, 0.0]]), y_train=np.array([0, 1])),
        "NaN",
    ),
    "zip escaping its folder": (
        "z.zip",
        zip_bytes(
            {
                "train/a/1.png": png_bytes((0, 0, 0)),
                "train/b/../../../evil.png": png_bytes((1, 1, 1)),
            }
        ),
        "escapes its folder",
    ),
    "absolute zip path": (
        "abs.zip",
        zip_bytes({"/etc/evil.png": png_bytes((0, 0, 0))}),
        "absolute",
    ),
    "csv without label": ("c.csv", b"a,b\n1,2\n", "'label'"),
    "not an npz": ("junk.npz", b"not a zip at all", "not a readable .npz"),
    "corrupt zip entry": ("bad.zip", corrupt_deflated_zip(), "not a decodable image"),
    "0-d labels": ("s.npz", npz_bytes(x_train=np.zeros((4, 2)), y_train=np.array(1)), "single"),
    "overflows float32": (
        "big.npz",
        npz_bytes(x_train=np.array([[0.0, 1e300], [1.0, 0.0]]), y_train=np.array([0, 1])),
        "inf",
    ),
    "one distinct class": (
        "one.npz",
        npz_bytes(
            x_train=np.zeros((4, 2)),
            y_train=np.zeros(4, dtype=int),
            class_names=np.array(["a", "b"]),
        ),
        "fewer than 2 distinct",
    ),
    "huge label": (
        "h.npz",
        npz_bytes(x_train=np.zeros((2, 2)), y_train=np.array([0, 10**9])),
        "at most",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_422_naming_the_problem_and_leaves_nothing(service, case):
    client, settings = service
    name, data, expected = BAD_UPLOADS[case]
    r = upload(client, name, data)
    assert r.status_code == 422, r.text
    assert expected in r.json()["detail"]
    assert_nothing_written(client, settings)


def test_upload_over_the_limit_is_413(service):
    client, settings = service
    big = npz_bytes(
        x_train=np.zeros((MAX_UPLOAD // 8, 2)), y_train=np.zeros(MAX_UPLOAD // 8, dtype=np.int64)
    )
    assert len(big) > MAX_UPLOAD
    r = upload(client, "big.npz", big)
    assert r.status_code == 413 and str(MAX_UPLOAD) in r.json()["detail"]
    assert_nothing_written(client, settings)


def test_unsupported_extension_is_415(service):
    client, settings = service
    assert upload(client, "data.parquet", b"PAR1").status_code == 415
    assert_nothing_written(client, settings)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}]
)
def test_missing_or_wrong_key_is_401(service, headers):
    client, settings = service
    assert client.get("/v1/datasets", headers=headers).status_code == 401
    r = upload(client, "tiny.npz", npz_bytes(**tiny_arrays()), headers=headers)
    assert r.status_code == 401
    assert_nothing_written(client, settings)


def test_generated_key_is_stored_0600_and_reused(tmp_path):
    from app.settings import Settings
    from tests.support.service_client import client_for as make_client

    settings = Settings(data_dir=tmp_path / "data")
    with make_client(settings) as client:
        key_file = settings.data_dir / "api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert (
            client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
    with make_client(settings) as client:  # second start: same key
        assert (
            client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
        assert client.get("/healthz").status_code == 200  # no key needed
