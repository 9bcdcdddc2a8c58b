"""Deployment checks: the real Docker Compose binary and the parsed compose configuration
(tests/support/compose.py). No container engine is involved anywhere in tests/deploy."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: over half a minute (a fresh venv install); .ci/run runs it, -m 'not slow' skips it",
    )
