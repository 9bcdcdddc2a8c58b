"""Browser fixtures: a REAL service (uvicorn + one Celery worker, embedded backend, as in
tests/e2e) with one small HET job trained beside its softmax baseline, and a headless
Chromium driven by selenium through /usr/bin/chromedriver.

Chromium runs with every host name but the loopback resolving to nothing, so a page that
reached for a CDN would fail loudly (a console error) as well as show up in the resource
timing list the tests check.

Skipped, with the reason, when chromium, chromedriver or selenium is missing (.ci/run
installs chromium).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.browser_pages import CLASS_NAMES, SCREENSHOTS
from tests.support.e2e_jobs import SMALL_HET_HEAD, submit, wait_for_status
from tests.support.service_stack import API_KEY, Stack
from tests.support.waiting import free_port

JOB = {
    "head": SMALL_HET_HEAD,
    "backbone": {"kind": "mlp", "hidden": [32]},
    "train": {"epochs": 12, "batch_size": 32, "lr": 0.01, "device": "cpu"},
    "compare_baseline": True,
}


def _binary(*names: str) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return None


CHROMIUM = _binary("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _binary("chromedriver")


def dataset_npz(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Four classes in 8 dimensions, a fifth of the training labels flipped between
    neighbours (cat<->dog, fox<->owl), 3/4 train, 1/4 test."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = (rng.normal(size=(n, 8)) + 3.0 * np.eye(8)[y]).astype(np.float32)
    cut = 3 * n // 4
    noisy = y[:cut].copy()
    flip = rng.random(cut) < 0.2
    noisy[flip] = noisy[flip] ^ 1
    np.savez(
        path,
        x_train=x[:cut],
        y_train=noisy,
        x_test=x[cut:],
        y_test=y[cut:],
        class_names=np.array(CLASS_NAMES),
    )
    return path


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Iterator[Stack]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium or chromedriver is not installed (.ci/run installs them)")
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra has it)")
    root = tmp_path_factory.mktemp("browser")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HETSERVE_")}
    port = free_port()
    env = base_env | {
        "HETSERVE_DATA_DIR": str(root / "data"),
        "HETSERVE_API_KEYS": API_KEY,
        "HETSERVE_CANCEL_POLL_INTERVAL_S": "0.2",
        "HETSERVE_BROKER_POLLING_INTERVAL_S": "0.1",
        "HETSERVE_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    stack = Stack("embedded", env, root / "data", port)
    with stack.running():
        yield stack


@pytest.fixture(scope="session")
def trained(service, tmp_path_factory) -> dict:
    """The dataset id and the succeeded job (model + baseline) the pages show."""
    path = dataset_npz(tmp_path_factory.mktemp("data") / "animals.npz")
    with service.client() as client, open(path, "rb") as f:
        r = client.post("/v1/datasets", files={"file": ("animals.npz", f)})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        job_id = submit(client, dataset_id, JOB)["id"]
        job = wait_for_status(client, job_id, {"succeeded", "failed", "cancelled"}, 240)
    assert job["status"] == "succeeded", job["error"]
    return {"dataset_id": dataset_id, "job": job}


@pytest.fixture(scope="session")
def origin(service) -> str:
    return f"http://127.0.0.1:{service.port}"


@pytest.fixture(scope="session")
def browser(service):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1800",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Any host but the loopback resolves to nothing: a CDN load would fail.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


IMAGE_JOB = {
    "head": SMALL_HET_HEAD,
    "backbone": {"kind": "cnn"},
    "train": {"epochs": 10, "batch_size": 32, "lr": 0.005, "device": "cpu"},
}
SHAPES = {"cat": "ellipse", "dog": "rectangle", "fox": "triangle", "owl": "ring"}
COLORS = {"cat": (214, 98, 40), "dog": (70, 120, 200), "fox": (200, 60, 60), "owl": (90, 160, 90)}


def animal_image(name: str, rng: np.random.Generator, size: int = 32) -> bytes:
    """A class's shape and colour on a noisy background, placed at random."""
    import io

    from PIL import Image, ImageDraw

    background = rng.integers(200, 256, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    x, y = rng.integers(2, 10, size=2)
    box = (int(x), int(y), int(x) + 20, int(y) + 20)
    color = tuple(
        int(c) for c in np.clip(np.array(COLORS[name]) + rng.integers(-25, 26, 3), 0, 255)
    )
    if SHAPES[name] == "ellipse":
        draw.ellipse(box, fill=color)
    elif SHAPES[name] == "rectangle":
        draw.rectangle(box, fill=color)
    elif SHAPES[name] == "triangle":
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=color
        )
    else:
        draw.ellipse(box, outline=color, width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def animals_zip(per_class: int = 48, flip: float = 0.3, seed: int = 0) -> tuple[bytes, int]:
    """train/<class>/*.png and test/: a ``flip`` share of the cats filed under dog and
    of the dogs under cat (the flips the page should show). (zip bytes, flips)."""
    import io
    import zipfile

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    flips = 0
    with zipfile.ZipFile(out, "w") as archive:
        for name in CLASS_NAMES:
            for i in range(per_class):
                folder = name
                if name in ("cat", "dog") and rng.random() < flip:
                    folder, flips = ("dog" if name == "cat" else "cat"), flips + 1
                archive.writestr(f"train/{folder}/{name}{i:03d}.png", animal_image(name, rng))
            for i in range(per_class // 4):
                archive.writestr(f"test/{name}/{name}{i:03d}.png", animal_image(name, rng))
    return out.getvalue(), flips


@pytest.fixture(scope="session")
def trained_images(service) -> dict:
    """An image dataset (uploaded .zip, cat/dog labels flipped) and its succeeded HET job."""
    data, flips = animals_zip()
    with service.client() as client:
        r = client.post(
            "/v1/datasets",
            files={"file": ("animals.zip", data)},
            data={"image_size": "32"},
        )
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        job_id = submit(client, dataset_id, IMAGE_JOB)["id"]
        job = wait_for_status(client, job_id, {"succeeded", "failed", "cancelled"}, 300)
    assert job["status"] == "succeeded", job["error"]
    return {"dataset_id": dataset_id, "job": job, "flips": flips}
