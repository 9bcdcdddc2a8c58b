"""The layering rules, machine-checked: worker over app | models over core (app and models
never import each other, core imports none of them), the API's and core's import closures
hold no torch and no onnx, and the client imports nothing of the server.

`.importlinter` states the contracts and `make lint` runs it; these tests run it too, and
show that it fails when a module breaks one of them.
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
    for name in ("app", "core", "models", "worker", "hetserve"):
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


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("models/metrics.py", "import app.settings  # noqa  (models never import the API)"),
        ("app/errors.py", "import models.metrics  # noqa  (nor the API models)"),
        ("core/statuses.py", "import models.metrics  # noqa  (core is under models)"),
        ("core/statuses.py", "import app.settings  # noqa  (and under app)"),
        ("core/statuses.py", "import torch  # noqa"),
    ],
)
def test_a_layer_may_not_import_upwards_or_sideways(tmp_path, module, line):
    tree = copy_tree(tmp_path)
    source = tree / module
    source.write_text(source.read_text() + "\n" + line + "\n")
    done = lint_imports(tree)
    assert done.returncode != 0
    importer = module.removesuffix(".py").replace("/", ".")
    assert "Broken contracts" in done.stdout and importer in done.stdout
