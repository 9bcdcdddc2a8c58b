"""POST /v1/jobs refuses (422) exactly the specs the worker would refuse.

The worker, before it trains, runs core.spec.validate_run on the stored spec and the
dataset's row (the spec parses and fits the dataset). Generated specs, valid or not, go
to the API; each answer must be 422 iff that check fails, and a spec the API accepted
must pass the check again as stored.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.spec import SpecMismatch, validate_run
from tests.support.service_client import AUTH, client_for, make_settings, npz_bytes, tiny_arrays


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    app_settings = make_settings(tmp_path_factory.mktemp("spec") / "data")
    rng = np.random.default_rng(0)
    uploads = {
        "vectors": tiny_arrays(),
        # Two rows and no x_val: most validation fractions leave no training row.
        "two rows": {"x_train": rng.normal(size=(2, 3)).astype(np.float32), "y_train": [0, 1]},
        "images": {
            "x_train": rng.normal(size=(8, 1, 6, 6)).astype(np.float32),
            "y_train": np.arange(8) % 2,
        },
    }
    with client_for(app_settings) as client:
        datasets = {}
        for name, arrays in uploads.items():
            r = client.post(
                "/v1/datasets", files={"file": ("d.npz", npz_bytes(**arrays))}, headers=AUTH
            )
            assert r.status_code == 201, r.text
            datasets[name] = SimpleNamespace(**r.json())
        yield client, datasets


def worker_refuses(body: dict, dataset) -> bool:
    """What the worker decides for this body once stored (task filled in when unset)."""
    stored = {k: body[k] for k in ("head", "backbone", "train") if k in body}
    stored["task"] = body.get("task") or dataset.task
    try:
        validate_run(stored, dataset)
    except (ValidationError, SpecMismatch):
        return True
    return False


def floats(lo: float, hi: float, *special: float):
    # Finite only: NaN and Infinity are the separate test below.
    return st.one_of(st.floats(lo, hi), st.sampled_from([1e308, -1e308, *special]))


def optional(**fields):
    return st.fixed_dictionaries({}, optional=fields)


HEAD = optional(
    kind=st.sampled_from(["het", "softmax", "bayes"]),
    num_factors=st.integers(-2, 300),
    temperature=st.one_of(
        floats(-1, 5, 0.0, 1.0), st.sampled_from(["auto", "learned", "hot"]), st.integers(-1, 4)
    ),
    temperature_grid=st.lists(
        st.one_of(st.sampled_from([0.5, 1.0, 1.0000001, 3.0, 0.0, -1.0]), floats(0.01, 4)),
        max_size=18,
    ),
    temperature_bounds=st.lists(floats(-1, 4, 0.3, 1.0, 3.0), min_size=1, max_size=3),
    train_mc_samples=st.integers(-1, 110_000),
    eval_mc_samples=st.one_of(st.integers(-1, 110_000), st.just(100_000)),
    parameter_efficient=st.booleans(),
    share_samples_across_batch=st.booleans(),
)
BACKBONE = optional(
    kind=st.sampled_from(["mlp", "cnn", "resnet18", "resnet50", "resnet18_cifar", "vit"]),
    hidden=st.lists(st.integers(-1, 20_000), max_size=18),
    dropout=floats(-0.5, 1.5, 0.0),
    augment=st.booleans(),
    hflip=st.booleans(),
    weights=st.sampled_from(
        [None, "/weights/r50.pth", "file:///w/r.pth", "r50.pth", "s3://b/r.pth", "", 3]
    ),
    freeze=st.one_of(st.booleans(), st.just("no")),
)
TRAIN = optional(
    epochs=st.integers(-1, 11_000),
    batch_size=st.one_of(st.integers(-1, 70_000), st.just(65_536)),
    lr=floats(-1, 12, 10.0),
    weight_decay=floats(-1, 1, 0.0),
    seed=st.integers(-1, 2**32),
    device=st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
    val_fraction=floats(-0.1, 1.1, 0.5, 0.75, 0.9),
    devices=st.integers(-1, 20),
)
BODY = optional(
    task=st.sampled_from([None, "multiclass", "multilabel", "binary"]),
    head=HEAD,
    backbone=BACKBONE,
    train=TRAIN,
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODY, which=st.sampled_from(["vectors", "two rows", "images"]))
# A learned temperature starts at 1.0: bounds that exclude it cannot train.
@example(body={"head": {"temperature": "learned", "temperature_bounds": [1.5, 3]}}, which="vectors")
# One unit per grid temperature: a value given twice would train the same unit twice.
@example(body={"head": {"temperature": "auto", "temperature_grid": [1.0, 1.0]}}, which="vectors")
@example(body={"head": {"temperature_grid": [1.0, 1.0000001]}}, which="vectors")
@example(body={"backbone": {"kind": "cnn"}}, which="vectors")
@example(body={"backbone": {"kind": "mlp"}}, which="images")
@example(body={"train": {"val_fraction": 0.9}}, which="two rows")
@example(body={"task": "multilabel"}, which="vectors")
@example(
    body={"head": {"share_samples_across_batch": False, "eval_mc_samples": 100_000}},
    which="vectors",
)
@example(body={}, which="vectors")
# Pretrained weights: a resnet only, a local file only, RGB images only.
@example(body={"backbone": {"kind": "resnet50", "weights": "s3://b/r.pth"}}, which="images")
@example(body={"backbone": {"kind": "cnn", "weights": "/w/r.pth"}}, which="images")
@example(body={"backbone": {"kind": "resnet18", "weights": "/w/r.pth"}}, which="images")
@example(body={"backbone": {"kind": "resnet50", "freeze": True}}, which="images")
@example(body={"train": {"device": "cpu", "devices": 3}}, which="vectors")
def test_the_api_refuses_a_spec_iff_the_worker_would(service, body, which):
    client, datasets = service
    dataset = datasets[which]
    r = client.post("/v1/jobs", json={"dataset_id": dataset.id, **body}, headers=AUTH)
    assert r.status_code in (202, 422), r.text
    refused = worker_refuses(body, dataset)
    event("refused" if refused else "accepted")
    assert (r.status_code == 422) == refused, (body, r.text)
    if r.status_code == 202:
        # What the worker will actually read: the spec as stored.
        validate_run(r.json()["spec"], dataset)


@pytest.mark.parametrize(
    "head",
    [
        # Once accepted by the API and then failed by the worker.
        {"temperature": "learned", "temperature_bounds": [1.5, 3]},
        # Once refused by the API and accepted by the worker.
        {"temperature": "auto", "temperature_grid": [1.5, 1.5]},
    ],
)
def test_both_sides_refuse_what_they_used_to_disagree_on(service, head):
    client, datasets = service
    body = {"dataset_id": datasets["vectors"].id, "head": head}
    assert worker_refuses(body, datasets["vectors"])
    r = client.post("/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_number_is_422(service, value):
    client, datasets = service
    body = {"dataset_id": datasets["vectors"].id, "train": {"lr": value}}
    assert worker_refuses(body, datasets["vectors"])
    # json.dumps writes NaN and Infinity as tokens the API's JSON parser reads.
    r = client.post(
        "/v1/jobs",
        content=json.dumps(body),
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text


def test_a_422_echoes_only_a_short_excerpt_of_a_large_value(service):
    client, datasets = service
    huge = "x" * 1_000_000
    body = {"dataset_id": datasets["vectors"].id, "head": {"temperature": huge}}
    r = client.post("/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 422
    assert len(r.content) < 4_000, len(r.content)
    assert any(
        e["loc"][-1] == "temperature" or "temperature" in e["loc"] for e in r.json()["detail"]
    )


def test_the_published_schema_has_the_backbone_and_device_fields(service):
    client, _ = service
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    backbone = schemas["BackboneSpec"]["properties"]
    assert {"weights", "freeze"} <= backbone.keys()
    assert set(backbone["kind"]["enum"]) >= {"resnet18", "resnet50"}
    assert schemas["TrainSpec"]["properties"]["devices"]["default"] == 1
