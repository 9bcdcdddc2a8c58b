""".env.example documents every setting of app/settings.py with its real default."""

from __future__ import annotations

import re

from app.settings import Settings
from tests.support.compose import REPO

LINE = re.compile(r"^#?\s*(HETSERVE_[A-Z0-9_]+)=(.*)$")


def documented() -> dict[str, str]:
    found = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if match := LINE.match(line.strip()):
            found[match[1]] = match[2].strip()
    return found


def test_every_setting_is_listed_with_its_default():
    listed = documented()
    missing = [f"HETSERVE_{name.upper()}" for name in Settings.model_fields
               if f"HETSERVE_{name.upper()}" not in listed]  # fmt: skip
    assert not missing, f".env.example lacks {missing}"
    for name, field in Settings.model_fields.items():
        raw = listed[f"HETSERVE_{name.upper()}"]
        if field.default is None:
            assert raw == "", (
                f"HETSERVE_{name.upper()} defaults to unset, .env.example says {raw!r}"
            )
            continue
        # The documented text, read the way the service reads it, is the default.
        parsed = Settings.model_validate({name: raw}).__getattribute__(name)
        assert parsed == field.default, (
            f"HETSERVE_{name.upper()}={raw} but the default is {field.default!r}"
        )


def test_nothing_listed_that_is_not_a_setting():
    fields = {f"HETSERVE_{name.upper()}" for name in Settings.model_fields}
    compose_only = {"HETSERVE_PUBLISH", "HETSERVE_API_IMAGE", "HETSERVE_WORKER_IMAGE",
                    "HETSERVE_WORKER_IMAGE_CPU"}  # fmt: skip
    assert set(documented()) - fields == compose_only
