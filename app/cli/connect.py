"""How the HTTP commands find and authenticate to a running service: ``--url`` /
``HETSERVE_URL`` (default HETSERVE_HOST:HETSERVE_PORT), and ``--key=KEY`` /
``HETSERVE_API_KEY``, else the first of ``HETSERVE_API_KEYS``, else the key file the
service wrote into the data folder.
"""

from __future__ import annotations

import argparse
import os

from app.settings import Settings
from hetserve import Client

HTTP_TIMEOUT_S = 60.0
KEY_HELP = (
    "API key. Use --key=KEY (with '=') when the key starts with '-'. Default: "
    "HETSERVE_API_KEY, else the first of HETSERVE_API_KEYS, else <data folder>/api_key "
    "(HETSERVE_DATA_DIR, default ./var), the file `hetserve up` writes"
)


def client_from(args: argparse.Namespace) -> Client:
    """The hetserve.Client for --url/--key, or the defaults the module docstring lists."""
    settings = Settings()
    url = args.url or os.environ.get("HETSERVE_URL")
    url = url or f"http://{client_host(settings.host)}:{settings.port}"
    key, source = (args.key, "--key") if args.key else _default_key(settings)
    args.key_source = source
    return Client(url, key or "", timeout=HTTP_TIMEOUT_S)


def _default_key(settings: Settings) -> tuple[str | None, str]:
    """(key, where it came from)."""
    if key := os.environ.get("HETSERVE_API_KEY"):
        return key, "HETSERVE_API_KEY"
    if settings.api_keys:
        return settings.api_keys.split(",")[0].strip(), "HETSERVE_API_KEYS"
    key_file = settings.data_dir / "api_key"
    if key_file.exists():
        return key_file.read_text().strip(), str(key_file.resolve())
    return None, f"nowhere: no --key, HETSERVE_API_KEY, HETSERVE_API_KEYS or {key_file}"


def auth_hint(args: argparse.Namespace) -> str:
    source = getattr(args, "key_source", None) or "nowhere"
    data_dir = Settings().data_dir
    return (
        f"the service refused the API key (key taken from {source}).\n"
        f"  `hetserve up` prints its key and stores it in <data folder>/api_key "
        f"(here {data_dir / 'api_key'}; the folder is HETSERVE_DATA_DIR); with "
        "HETSERVE_API_KEYS set, the keys are those.\n"
        "  Pass it as --key=KEY (the '=' form also works for keys starting with '-') or "
        "export HETSERVE_API_KEY=KEY."
    )


def client_host(host: str) -> str:
    """The address a client on this machine reaches a server listening on ``host`` at."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
