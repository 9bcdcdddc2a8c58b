"""``hetserve datasets``: upload, register, correct, list, show and remove datasets."""

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
    if lineage := dataset.get("lineage"):
        print(f"  lineage  {lineage_text(lineage)}")
    return 0


def lineage_text(lineage: hetserve.DatasetLineage) -> str:
    """What a corrected dataset was made of, in one line."""
    parent = f"from dataset {lineage['parent_dataset_id']}"
    changed = f"{lineage['num_relabelled']} relabelled, {lineage['num_dropped']} dropped"
    if lineage["rule"] == "csv":
        return f"{parent}: corrections CSV sha256 {lineage['csv_sha256']} ({changed})"
    top = "every flagged row" if lineage.get("top") is None else f"top {lineage['top']} flagged"
    return f"{parent}: {lineage['rule']} {top} of model {lineage['model_id']} ({changed})"


def cmd_datasets_correct(args: argparse.Namespace) -> int:
    client = client_from(args)
    if (args.csv is None) == (args.from_model is None):
        raise CliError("give exactly one of --from-model MODEL or --csv FILE")
    if args.csv is not None:
        if not Path(args.csv).is_file():
            raise CliError(f"no such file: {args.csv}")
        dataset = client.correct_from_csv(args.dataset_id, args.csv, name=args.name)
    else:
        dataset = client.correct_from_model(
            args.dataset_id, args.from_model, args.action, top=args.top, name=args.name
        )
    _print_dataset(args, dataset)
    if not args.json and not args.quiet and (lineage := dataset.get("lineage")):
        print(f"  lineage  {lineage_text(lineage)}")
    return 0


def cmd_datasets_rm(args: argparse.Namespace) -> int:
    client_from(args).delete_dataset(args.dataset_id)
    print(f"dataset {args.dataset_id} removed")
    return 0


def dataset_line(d: hetserve.Dataset) -> str:
    return (
        f"{d['id']}  {d['name']}  {d['task']}  x{d['input_shape']}  {d['num_classes']} classes  "
        f"train/val/test {d['num_train']}/{d['num_val']}/{d['num_test']}"
        + ("  (corrected)" if d.get("lineage") else "")
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
    correct = commands.subcommand(
        datasets,
        "correct",
        "a new dataset from DATASET plus corrections: a model's findings or a CSV of "
        "index,label lines (no image is copied)",
        cmd_datasets_correct,
        parents=[client, quiet],
    )
    correct.add_argument("dataset_id", help="the dataset to correct")
    correct.add_argument("--from-model", metavar="MODEL", help="a model trained on it")
    correct.add_argument(
        "--action", choices=["relabel", "drop"], default="relabel", help="with --from-model"
    )
    correct.add_argument("--top", type=int, help="the N most suspect flagged rows (default all)")
    correct.add_argument("--csv", metavar="FILE", help="index,label corrections")
    correct.add_argument("--name", help="display name of the new dataset")
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
