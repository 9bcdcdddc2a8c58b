"""POST /v1/datasets {"uri": ...}: datasets registered where they are (image folders
and .npz files under HETSERVE_DATASET_ROOTS), validated in place, recorded as a manifest."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from core import datastore
from core.dataset_files import DatasetError
from core.manifest import check_manifest, open_manifest
from tests.support.folder_datasets import image_folder
from tests.support.service_client import (
    AUTH,
    client_for,
    files_under,
    make_settings,
    npz_bytes,
    png_bytes,
    tiny_arrays,
)


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    return allowed, tmp_path / "outside"


@pytest.fixture
def service(tmp_path, roots):
    settings = make_settings(tmp_path / "data", dataset_roots=f"{roots[0]}, /nonexistent")
    with client_for(settings) as client:
        yield client, settings


def register(client, uri, **fields):
    return client.post("/v1/datasets", json={"uri": uri, **fields}, headers=AUTH)


def assert_nothing_written(client, settings):
    assert client.get("/v1/datasets", headers=AUTH).json() == []
    assert files_under(settings.data_dir / "artifacts") == []


def test_image_folder_registers_with_its_manifest(service, roots):
    client, settings = service
    folder = image_folder(roots[0] / "pets")
    r = register(client, f"file://{folder}", image_size=16, name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "imagefolder" and ds["name"] == "pets"
    assert (ds["num_train"], ds["num_val"], ds["num_test"]) == (9, 0, 9)
    assert ds["class_names"] == ["cat", "dog", "fox"] and ds["num_classes"] == 3
    assert ds["input_shape"] == [3, 16, 16] and ds["task"] == "multiclass"
    (stored,) = files_under(settings.data_dir / "artifacts")
    manifest = json.loads(stored.read_text())
    train = manifest["splits"]["train"]
    assert train["paths"][0] == "train/cat/0.png" and train["labels"][:4] == [0, 0, 0, 1]
    assert len(train["sizes"]) == len(train["mtimes_ns"]) == 9
    # What size and mtime cannot pin down: each image's content, read at registration.
    first = roots[0] / "pets" / "train" / "cat" / "0.png"
    assert train["sha256"][0] == hashlib.sha256(first.read_bytes()).hexdigest()
    check_manifest(manifest)  # unchanged: passes
    # Grayscale: one channel.
    r = register(client, f"file://{folder}", image_size=8, grayscale=True)
    assert r.status_code == 201 and r.json()["input_shape"] == [1, 8, 8]
    # Deleting a dataset deletes its manifest, never the data.
    for d in client.get("/v1/datasets", headers=AUTH).json():
        assert client.delete(f"/v1/datasets/{d['id']}", headers=AUTH).status_code == 204
    assert_nothing_written(client, settings)
    assert len(list(folder.rglob("*.png"))) == 18


def test_npz_registers_in_place(service, roots):
    client, _ = service
    path = roots[0] / "tiny.npz"
    path.write_bytes(npz_bytes(**tiny_arrays(n=30, k=3)))
    r = register(client, f"file://{path}")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "npz-ref" and ds["num_train"] == 30 and ds["num_classes"] == 3


def test_off_without_roots(tmp_path, roots):
    settings = make_settings(tmp_path / "data")
    folder = image_folder(roots[0] / "pets")
    with client_for(settings) as client:
        r = register(client, f"file://{folder}")
        assert r.status_code == 403 and "registration by reference is off" in r.text
        assert_nothing_written(client, settings)


def test_outside_the_roots_and_symlink_escapes_are_403(service, roots):
    client, settings = service
    allowed, outside = roots
    folder = image_folder(outside / "pets")
    assert register(client, f"file://{folder}").status_code == 403
    assert register(client, f"file://{allowed}/../outside/pets").status_code == 403
    # No s3:// root is listed: an s3 URI is outside them all (s3fs or not).
    r = register(client, "s3://bucket/data")
    assert r.status_code == 403 and "outside the allowed" in r.text
    (allowed / "link").symlink_to(folder)  # a folder symlink that leads out
    r = register(client, f"file://{allowed}/link")
    assert r.status_code == 403 and "outside the allowed" in r.text
    inner = image_folder(allowed / "pets")  # one file symlink deep inside leads out
    (inner / "train" / "cat" / "evil.png").symlink_to(folder / "train" / "cat" / "0.png")
    r = register(client, f"file://{inner}")
    assert r.status_code == 403 and "evil.png" in r.text
    assert_nothing_written(client, settings)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3:///data", "needs a bucket"),
        ("http://example.com/x", "unsupported URI scheme"),
        ("file://relative/x", "file URI with a host"),
    ],
)
def test_other_schemes_are_422(service, uri, message):
    client, settings = service
    r = register(client, uri)
    assert r.status_code == 422 and message in r.text
    assert_nothing_written(client, settings)


def test_bad_layouts_are_422(service, roots):
    client, settings = service
    allowed = roots[0]
    one = allowed / "one"
    (one / "train" / "only").mkdir(parents=True)
    (one / "train" / "only" / "a.png").write_bytes(png_bytes((1, 2, 3)))
    r = register(client, f"file://{one}")
    assert r.status_code == 422 and "at least 2 classes" in r.text
    r = register(client, f"file://{allowed / 'missing'}")
    assert r.status_code == 422 and "does not exist" in r.text
    notrain = allowed / "notrain"
    (notrain / "test" / "a").mkdir(parents=True)
    r = register(client, f"file://{notrain}")
    assert r.status_code == 422 and "no train/" in r.text
    extra = image_folder(allowed / "extra")
    (extra / "train" / "cat" / "notes.txt").write_text("hi")
    r = register(client, f"file://{extra}")
    assert r.status_code == 422 and "notes.txt" in r.text
    unknown = image_folder(allowed / "unknown")
    (unknown / "test" / "wolf").mkdir()
    (unknown / "test" / "wolf" / "0.png").write_bytes(png_bytes((0, 0, 0)))
    r = register(client, f"file://{unknown}")
    assert r.status_code == 422 and "wolf" in r.text
    assert register(client, f"file://{allowed}", bogus=1).status_code == 422
    assert_nothing_written(client, settings)


def test_undecodable_sample_is_422(service, roots):
    client, settings = service
    folder = image_folder(roots[0] / "pets", per_class=1)
    (folder / "train" / "dog" / "0.png").write_bytes(b"not a png at all")
    r = register(client, f"file://{folder}")
    assert r.status_code == 422 and "train/dog/0.png" in r.text and "decodable" in r.text
    assert_nothing_written(client, settings)


def test_multipart_upload_still_works_and_empty_post_is_422(service):
    client, _ = service
    r = client.post(
        "/v1/datasets",
        files={"file": ("t.npz", npz_bytes(**tiny_arrays(n=20, k=2)))},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    assert client.post("/v1/datasets", headers=AUTH).status_code == 422


def test_changed_or_missing_files_are_named(service, roots):
    client, settings = service
    folder = image_folder(roots[0] / "pets")
    assert register(client, f"file://{folder}").status_code == 201
    (stored,) = files_under(settings.data_dir / "artifacts")
    manifest = json.loads(stored.read_text())
    target = folder / "train" / "dog" / "1.png"
    target.write_bytes(png_bytes((1, 1, 1), size=13))
    with pytest.raises(DatasetError, match="train/dog/1.png .*changed"):
        check_manifest(manifest)
    os.remove(target)
    with pytest.raises(DatasetError, match="train/dog/1.png is missing"):
        check_manifest(manifest)


@pytest.mark.parametrize("proc", [True, False], ids=["proc-fd", "realpath-and-inode"])
def test_a_file_swapped_for_a_symlink_out_of_the_roots_is_refused_when_opened(
    service, roots, monkeypatch, proc
):
    """Whichever way the opened file's real path is found (Linux's /proc/self/fd, or
    realpath checked against the opened inode elsewhere), a symlink leading out of the
    roots is refused on open, and one within them still opens."""
    client, settings = service
    folder = image_folder(roots[0] / "pets")
    assert register(client, f"file://{folder}").status_code == 201
    (stored,) = files_under(settings.data_dir / "artifacts")
    manifest = json.loads(stored.read_text())
    if not proc:
        readlink = os.readlink

        def no_proc(path, *args, **kwargs):
            if str(path).startswith("/proc/self/fd/"):
                raise OSError("no /proc here")
            return readlink(path, *args, **kwargs)

        monkeypatch.setattr(datastore.os, "readlink", no_proc)
    data = open_manifest(manifest, roots=settings.dataset_root_list)
    index = data.x_train.paths.index("train/dog/1.png")
    target = folder / "train" / "dog" / "1.png"
    inside = roots[0] / "copy.png"
    inside.write_bytes(target.read_bytes())
    os.utime(inside, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns))
    target.unlink()
    target.symlink_to(inside)
    assert data.x_train.load(index).shape == (3, 32, 32)  # within the roots: read
    roots[1].mkdir()
    outside = roots[1] / "copy.png"
    os.replace(inside, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(datastore.NotAllowed, match="train/dog/1.png .*outside the allowed"):
        data.x_train.load(index)
