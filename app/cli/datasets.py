"""``hetserve datasets``: upload, register, list, show and remove datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

import hetserve
from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.output import CliError, print_json


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    dataset = client_from(args).upload_dataset(
        path, name=args.name, image_size=args.image_size, grayscale=args.grayscale
    )
    _print_dataset(args, dataset)
    return 0


def cmd_datasets_register(args: argparse.Namespace) -> int:
    uri = args.uri if "://" in args.uri else Path(args.uri).resolve().as_uri()
    _print_dataset(args, client_from(args).register_dataset(uri))
    return 0


def _print_dataset(args: argparse.Namespace, dataset: hetserve.Dataset) -> None:
    if args.json:
        print_json(dataset)
    elif args.quiet:
        print(dataset["id"])
    else:
        print(dataset_line(dataset))


def cmd_datasets_ls(args: argparse.Namespace) -> int:
    datasets = client_from(args).list_datasets(limit=args.limit)
    if args.json:
        print_json(datasets)
    for dataset in [] if args.json else datasets:
        print(dataset_line(dataset))
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    dataset = client_from(args).get_dataset(args.dataset_id)
    if args.json:
        print_json(dataset)
        return 0
    print(dataset_line(dataset))
    print(f"  classes  {', '.join(dataset['class_names'])}")
    print(
        f"  format   {dataset['format']}, {dataset['size_bytes']} bytes, sha256 {dataset['sha256']}"
    )
    print(f"  created  {dataset['created_at']}")
    return 0


def cmd_datasets_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_dataset(args.dataset_id)
    print(f"dataset {args.dataset_id} removed")
    return 0


def dataset_line(d: hetserve.Dataset) -> str:
    return (
        f"{d['id']}  {d['name']}  {d['task']}  x{d['input_shape']}  {d['num_classes']} classes  "
        f"train/val/test {d['num_train']}/{d['num_val']}/{d['num_test']}"
    )


def add_commands(commands: Commands) -> None:
    datasets = commands.group("datasets", "upload, register, list, show and remove datasets")
    client, quiet = commands.client, commands.quiet
    upload = commands.subcommand(
        datasets,
        "upload",
        "upload a .npz, .csv or .zip of image folders",
        cmd_datasets_upload,
        parents=[client, quiet],
    )
    upload.add_argument("file", help="the dataset file")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--image-size", type=int, default=32, help=".zip: resize images to N×N")
    upload.add_argument("--grayscale", action="store_true", help=".zip: decode as one channel")
    register = commands.subcommand(
        datasets,
        "register",
        "register a dataset that stays where it is (under the service's HETSERVE_DATASET_ROOTS)",
        cmd_datasets_register,
        parents=[client, quiet],
    )
    register.add_argument("uri", help="file:///... URI or a path on the service's machine")
    ls = commands.subcommand(
        datasets, "ls", "list datasets, newest first", cmd_datasets_ls, parents=[client]
    )
    ls.add_argument("--limit", type=int, default=100, help="at most this many")
    for name, func, text in (
        ("show", cmd_datasets_show, "show one dataset"),
        ("rm", cmd_datasets_rm, "remove a dataset no job uses"),
    ):
        commands.subcommand(datasets, name, text, func, parents=[client]).add_argument(
            "dataset_id", help="dataset id"
        )
