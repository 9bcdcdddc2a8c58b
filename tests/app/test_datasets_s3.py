"""s3://bucket/prefix datasets by reference, against a real S3-compatible server: moto's
S3 server on a loopback port, read through s3fs (the s3 extra). Registration validates
the layout by listing the bucket, the manifest records each object's ETag, the worker
streams the objects and checks each against it (a changed or missing one is named)."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed: pip install -e .[s3]")
moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] (the dev extra) is not installed: no local S3 server"
)

from app.db import session_scope  # noqa: E402
from app.store import JobStore  # noqa: E402
from core.dataset_files import DatasetError  # noqa: E402
from core.manifest import check_manifest, open_manifest  # noqa: E402
from tests.support.folder_datasets import (  # noqa: E402
    COLORS,  # noqa: E402
    FOLDER_SPEC,
    job_row,
    synthetic_folder,
)
from tests.support.service_client import (  # noqa: E402
    AUTH,
    client_for,
    files_under,
    make_settings,
    npz_bytes,
    png_bytes,
    tiny_arrays,
)


@pytest.fixture(scope="module")
def endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """(s3fs filesystem, a fresh bucket): the standard AWS variables carry the (moto)
    credentials, as an operator's would."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    bucket = f"hetserve-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, bucket


def upload_folder(fs, bucket: str, prefix: str, per_class: int = 3) -> str:
    fs.pipe(
        {
            f"{bucket}/{prefix}/{split}/{name}/{i}.png": png_bytes(color, size=12)
            for split in ("train", "test")
            for name, color in COLORS.items()
            for i in range(per_class)
        }
    )
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def service(s3, endpoint, tmp_path):
    fs, bucket = s3
    local = tmp_path / "local"
    local.mkdir()
    settings = make_settings(
        tmp_path / "data",
        dataset_roots=f"{local}, s3://{bucket}/allowed",
        s3_endpoint_url=endpoint,
        loader_workers=1,
    )
    with client_for(settings) as client:
        yield client, settings, fs, bucket


def register(client, uri, **fields):
    return client.post("/v1/datasets", json={"uri": uri, **fields}, headers=AUTH)


def stored_manifest(settings) -> dict:
    (stored,) = files_under(settings.data_dir / "artifacts")
    return json.loads(stored.read_text())


def test_an_s3_image_folder_and_npz_register_with_etags(service):
    client, settings, fs, bucket = service
    uri = upload_folder(fs, bucket, "allowed/pets")
    r = register(client, uri, image_size=16, name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "imagefolder" and ds["class_names"] == ["cat", "dog", "fox"]
    assert (ds["num_train"], ds["num_val"], ds["num_test"]) == (9, 0, 9)
    assert ds["input_shape"] == [3, 16, 16]
    manifest = stored_manifest(settings)
    assert manifest["root"] == f"s3://{bucket}/allowed/pets"
    train = manifest["splits"]["train"]
    assert train["paths"][0] == "train/cat/0.png" and train["labels"][:4] == [0, 0, 0, 1]
    key = f"{bucket}/allowed/pets/train/cat/0.png"
    assert train["sizes"][0] == fs.size(key)
    assert train["etags"][0] == fs.info(key)["ETag"].strip('"') and "mtimes_ns" not in train
    check_manifest(manifest, settings.s3_endpoint_url)  # unchanged: passes
    # An .npz by reference is read whole, its ETag recorded the same way.
    fs.pipe(f"{bucket}/allowed/tiny.npz", npz_bytes(**tiny_arrays(n=30, k=3)))
    r = register(client, f"s3://{bucket}/allowed/tiny.npz")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "npz-ref" and r.json()["num_train"] == 30
    (npz_manifest,) = [
        m
        for m in (json.loads(p.read_text()) for p in files_under(settings.data_dir / "artifacts"))
        if m["format"] == "npz-ref"
    ]
    assert npz_manifest["file"]["etag"] == fs.info(f"{bucket}/allowed/tiny.npz")["ETag"].strip('"')
    assert len(open_manifest(npz_manifest, settings.s3_endpoint_url).x_train) == 30
    fs.pipe(f"{bucket}/allowed/tiny.npz", npz_bytes(**tiny_arrays(n=30, k=3, seed=1)))
    with pytest.raises(DatasetError, match="tiny.npz .*changed.*etag"):
        open_manifest(npz_manifest, settings.s3_endpoint_url)
    # Deleting the datasets deletes the manifests, never the objects.
    for d in client.get("/v1/datasets", headers=AUTH).json():
        assert client.delete(f"/v1/datasets/{d['id']}", headers=AUTH).status_code == 204
    assert len(fs.find(f"{bucket}/allowed")) == 19  # 18 images and the .npz


def test_outside_the_s3_roots_is_403(service):
    client, settings, fs, bucket = service
    for prefix in ("other/pets", "allowedish/pets"):  # a key prefix is not a folder
        uri = upload_folder(fs, bucket, prefix)
        r = register(client, uri)
        assert r.status_code == 403 and "outside the allowed" in r.text, r.text
    r = register(client, f"s3://another-{bucket}/allowed/pets")
    assert r.status_code == 403
    r = register(client, f"s3://{bucket}/allowed/../other/pets")
    assert r.status_code == 422 and "'..'" in r.text
    assert files_under(settings.data_dir / "artifacts") == []


def test_bad_s3_layouts_are_422_naming_the_key(service):
    client, settings, fs, bucket = service
    uri = upload_folder(fs, bucket, "allowed/extra", per_class=1)
    fs.pipe(f"{bucket}/allowed/extra/train/cat/notes.txt", b"hi")
    r = register(client, uri)
    assert r.status_code == 422 and "train/cat/notes.txt" in r.text, r.text
    uri = upload_folder(fs, bucket, "allowed/broken", per_class=1)
    fs.pipe(f"{bucket}/allowed/broken/train/dog/0.png", b"not a png at all")
    r = register(client, uri)
    assert r.status_code == 422 and "train/dog/0.png" in r.text and "decodable" in r.text
    fs.pipe(f"{bucket}/allowed/notrain/test/a/0.png", png_bytes((0, 0, 0)))
    r = register(client, f"s3://{bucket}/allowed/notrain")
    assert r.status_code == 422 and "no train/" in r.text
    r = register(client, f"s3://{bucket}/allowed/missing")
    assert r.status_code == 422 and "does not exist" in r.text
    assert files_under(settings.data_dir / "artifacts") == []


def test_without_the_s3_extra_an_s3_uri_is_422(service, monkeypatch):
    client, settings, fs, bucket = service
    uri = upload_folder(fs, bucket, "allowed/pets", per_class=1)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    r = register(client, uri)
    assert r.status_code == 422 and "install hetserve[s3]" in r.text, r.text


def test_a_changed_or_missing_object_is_named_by_the_check_and_the_stream(service):
    client, settings, fs, bucket = service
    uri = upload_folder(fs, bucket, "allowed/pets")
    assert register(client, uri, image_size=8).status_code == 201
    manifest = stored_manifest(settings)
    data = open_manifest(manifest, settings.s3_endpoint_url)
    assert data.x_train.load(4).shape == (3, 8, 8)  # train/dog/1.png, as registered
    key = f"{bucket}/allowed/pets/train/dog/1.png"
    original = fs.cat(key)
    # Same size, other bytes: only the ETag tells.
    fs.pipe(key, original[:-1] + bytes([original[-1] ^ 1]))
    assert fs.size(key) == len(original)
    with pytest.raises(DatasetError, match="train/dog/1.png .*changed.*etag"):
        check_manifest(manifest, settings.s3_endpoint_url)
    with pytest.raises(DatasetError, match="train/dog/1.png .*changed.*etag"):
        data.x_train.load(4)  # what the DataLoader's processes call per image
    assert data.x_train.load(3).shape == (3, 8, 8)  # the others still read
    fs.rm(key)
    with pytest.raises(DatasetError, match="train/dog/1.png is missing"):
        check_manifest(manifest, settings.s3_endpoint_url)
    with pytest.raises(DatasetError, match="train/dog/1.png is missing"):
        data.x_train.load(4)


def test_training_streams_an_s3_folder_and_a_job_names_a_changed_object(service, tmp_path):
    """models.train.train on the worker's dataset (open_manifest) with a DataLoader process
    that opens its own s3fs client (s3fs is not fork-safe); then the worker's own path
    (worker.jobs.run_job in-process, its settings' endpoint) fails naming the object."""
    from core.spec import RunSpec
    from models.train import train
    from worker import jobs

    client, settings, fs, bucket = service
    local = synthetic_folder(tmp_path / "colours", per_class=8)
    prefix = f"{bucket}/allowed/colours"
    fs.pipe(
        {
            f"{prefix}/{path.relative_to(local).as_posix()}": path.read_bytes()
            for path in sorted(Path(local).rglob("*.png"))
        }
    )
    r = register(client, f"s3://{prefix}", image_size=8)
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    data = open_manifest(stored_manifest(settings), settings.s3_endpoint_url)
    data.x_train.num_workers = 1
    spec = FOLDER_SPEC | {"train": FOLDER_SPEC["train"] | {"epochs": 1}}
    result = train(
        RunSpec.model_validate({k: spec[k] for k in ("head", "backbone", "train")}), data
    )
    (epoch,) = result.history
    assert 0 < epoch["train_loss"] < 10 and 0 <= result.metrics["test_accuracy"] <= 1

    fs.pipe(f"{prefix}/train/green/00003.png", png_bytes((1, 2, 3), size=9))
    with session_scope(settings) as session:
        job_id = JobStore(session).create(dataset_id, FOLDER_SPEC | {"dataset_id": dataset_id}).id
    assert jobs.run_job(job_id, settings) == "failed"
    status, error, _ = job_row(settings, job_id)
    assert "train/green/00003.png" in error and "changed since the dataset was registered" in error
