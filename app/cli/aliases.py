"""``hetserve aliases``: point a name at a model, list and remove names."""

from __future__ import annotations

import argparse

from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.output import print_json


def cmd_aliases_set(args: argparse.Namespace) -> int:
    alias = client_from(args).set_alias(args.name, args.model_id)
    print_json(alias) if args.json else print(f"{alias['name']} -> {alias['model_id']}")
    return 0


def cmd_aliases_ls(args: argparse.Namespace) -> int:
    aliases = client_from(args).list_aliases()
    if args.json:
        print_json(aliases)
        return 0
    for alias in aliases:
        print(f"{alias['name']}  -> {alias['model_id']}  (updated {alias['updated_at']})")
    return 0


def cmd_aliases_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_alias(args.name)
    print(f"alias {args.name} removed")
    return 0


def add_commands(commands: Commands) -> None:
    aliases = commands.group("aliases", "name models (production, staging, ...)")
    client = [commands.client]
    alias_set = commands.subcommand(
        aliases,
        "set",
        "point an alias at a model (create or move)",
        cmd_aliases_set,
        parents=client,
    )
    alias_set.add_argument("name")
    alias_set.add_argument("model_id")
    commands.subcommand(aliases, "ls", "list aliases", cmd_aliases_ls, parents=client)
    commands.subcommand(
        aliases, "rm", "remove an alias (the model stays)", cmd_aliases_rm, parents=client
    ).add_argument("name")
