"""The layering rule, machine-checked: the API's import closure holds no torch and no onnx.

`.importlinter` states the contract and `make lint` runs it; these tests run it too, and
show that it fails when a module under app/ reaches torch, directly or through models/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    for name in ("app", "models", "worker", "hetserve"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_repository_keeps_the_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "line",
    [
        "import torch  # noqa",
        "import models.heads  # noqa  (torch, one step away)",
        "from worker import tasks  # noqa",
        "import onnx  # noqa",
    ],
)
def test_a_violation_breaks_the_contract(tmp_path, line):
    tree = copy_tree(tmp_path)
    settings = tree / "app" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + line + "\n")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert "Broken contracts" in done.stdout and "app.settings" in done.stdout


@pytest.mark.parametrize("line", ["import app.settings  # noqa", "import torch  # noqa"])
def test_the_client_may_not_import_the_server_or_torch(tmp_path, line):
    tree = copy_tree(tmp_path)
    errors = tree / "hetserve" / "errors.py"
    errors.write_text(errors.read_text() + "\n" + line + "\n")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert "Broken contracts" in done.stdout and "hetserve.errors" in done.stdout
