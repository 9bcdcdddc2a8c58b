"""The argument parser of ``hetserve``: the top level, the options the client commands
share, and each command module's commands in the order ``--help`` lists them."""

from __future__ import annotations

import argparse

import hetserve
from app.cli import aliases, datasets, demo, jobs, maintenance, models, predict, up
from app.cli.arguments import Commands
from app.cli.connect import KEY_HELP

COMMAND_MODULES = (up, maintenance, datasets, jobs, models, aliases, predict, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetserve",
        description="Train heteroscedastic (HET) classifiers and serve them with uncertainty. "
        "`hetserve up` runs the service; the other commands talk to a running one.",
        epilog="The service is found at --url / HETSERVE_URL (default "
        "http://HETSERVE_HOST:HETSERVE_PORT, 127.0.0.1:8000). "
        + KEY_HELP.replace("API key. ", "The API key: ")
        + ".",
    )
    parser.add_argument("--version", action="version", version=f"hetserve {hetserve.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", help="service URL (HETSERVE_URL; default http://HETSERVE_HOST:HETSERVE_PORT)"
    )
    client.add_argument("--key", metavar="KEY", help=KEY_HELP)
    client.add_argument("--json", action="store_true", help="print the API's JSON answer")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true", help="print only the id (for $(...) in scripts)"
    )

    commands = Commands(sub, client, quiet)
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser
