"""How a command module declares its commands (app/cli/parser.py calls each module's
``add_commands`` in the order ``hetserve --help`` lists them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Commands:
    """Where commands are added: ``sub``, the subcommands of ``hetserve``; ``client`` and
    ``quiet``, the parent parsers of the commands that talk to a service (``--url``,
    ``--key``, ``--json``; ``-q``)."""

    sub: argparse._SubParsersAction
    client: argparse.ArgumentParser
    quiet: argparse.ArgumentParser

    def command(
        self,
        name: str,
        help: str,
        func: Callable[[argparse.Namespace], int] | None = None,
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        """A command of ``hetserve``; see ``subcommand``."""
        return self.subcommand(self.sub, name, help, func, **kwargs)

    def subcommand(
        self,
        group: argparse._SubParsersAction,
        name: str,
        help: str,
        func: Callable[[argparse.Namespace], int] | None = None,
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        """A command of ``group`` whose description is its help as a sentence;
        ``func(args)`` runs it and returns the exit status."""
        parser = group.add_parser(
            name, help=help, description=help[:1].upper() + help[1:] + ".", **kwargs
        )
        if func is not None:
            parser.set_defaults(func=func)
        return parser

    def group(self, name: str, help: str) -> argparse._SubParsersAction:
        """A command of ``hetserve`` that holds subcommands (``hetserve jobs ls``)."""
        return self.command(name, help).add_subparsers(
            dest=f"{name}_command", required=True, metavar="SUBCOMMAND"
        )
