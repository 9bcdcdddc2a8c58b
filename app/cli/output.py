"""What every command prints on failure and in --json mode, and how it shows a database URL."""

from __future__ import annotations

import json
from typing import Any


class CliError(Exception):
    """A problem to report in one line and exit 1 (no traceback)."""


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{location}"
