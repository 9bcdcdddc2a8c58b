"""``hetserve models``: list and inspect trained models, download their ONNX file, and
print their label-noise and label-issue reports.
"""

from __future__ import annotations

import argparse

from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.jobs import metrics_table
from app.cli.output import print_json


def cmd_models_ls(args: argparse.Namespace) -> int:
    models = client_from(args).list_models(role=args.role, limit=args.limit)
    if args.json:
        print_json(models)
        return 0
    for m in models:
        accuracy = (m.get("metrics") or {}).get("test_accuracy")
        acc = f"  test_accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        print(
            f"{m['id']}  {m['role']:<8}  {m['head']:<7}  {m['task']}  x{m['input_shape']}  "
            f"{m['num_classes']} classes{acc}  job {m['job_id']}"
        )
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    m = client_from(args).get_model(args.model_id)
    if args.json:
        print_json(m)
        return 0
    print(f"model {m['id']}  ({m['role']}, head {m['head']}, {m['task']})")
    print(f"  job      {m['job_id']}")
    print(
        f"  input    {m['input_shape']}, {m['num_classes']} classes: {', '.join(m['class_names'])}"
    )
    print(f"  onnx     sha256 {m['onnx_sha256']}")
    if m.get("baseline_model_id"):
        print(f"  baseline {m['baseline_model_id']}")
    columns = {"model": m.get("metrics") or {}}
    if baseline := m.get("baseline_metrics"):
        columns["baseline"] = baseline
    if columns["model"]:
        print(metrics_table(columns))
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    path = client_from(args).download_onnx(args.model_id, args.out)
    print(path)
    return 0


def cmd_models_noise(args: argparse.Namespace) -> int:
    report = client_from(args).noise(args.model_id)
    if args.json:
        print_json(report)
        return 0
    print(f"model {report['model_id']}: label noise over {report['num_examples']} training inputs")
    pairs = report.get("class_pairs") or []
    if pairs:
        print("| classes | flip rate | latent correlation |")
        print("|---|---:|---:|")
        for pair in pairs[: args.top]:
            names = " ↔ ".join(pair.get("class_names") or [str(c) for c in pair["classes"]])
            print(f"| {names} | {pair['flip_rate']:.4f} | {pair['correlation']:+.4f} |")
    stds = report.get("noise_std_by_class")
    if stds:
        print("noise std by class: " + ", ".join(f"{s:.3f}" for s in stds))
    return 0


def cmd_models_label_issues(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.csv:
        # Every flagged row (every row with --all) unless --limit says otherwise.
        path = client.export_label_issues(
            args.model_id, args.csv, limit=args.limit, flagged=not args.all
        )
        print(path)
        return 0
    found = client.label_issues(args.model_id, limit=args.limit or 20)
    if args.json:
        print_json(found)
        return 0
    print(
        f"model {found['model_id']} (dataset {found['dataset_id']}): {found['num_flagged']} of "
        f"{found['num_examples']} training rows flagged, most likely mislabeled first"
    )
    issues = found.get("issues") or []
    if issues:
        print("| x_train row | given | suggested | score |")
        print("|---:|---|---|---:|")
        for issue in issues:
            given = issue.get("given_name", issue["given_label"])
            suggested = issue.get("suggested_name", issue["suggested_label"])
            print(f"| {issue['index']} | {given} | {suggested} | {issue['score']:.4f} |")
    return 0


def add_commands(commands: Commands) -> None:
    models = commands.group(
        "models", "list and inspect trained models, their noise and label issues"
    )
    client = [commands.client]
    ls = commands.subcommand(
        models, "ls", "list models, newest first", cmd_models_ls, parents=client
    )
    ls.add_argument("--role", choices=["model", "baseline"], help="only this role")
    ls.add_argument("--limit", type=int, default=20, help="at most this many")
    commands.subcommand(
        models,
        "show",
        "show a model (id or alias) and its test metrics",
        cmd_models_show,
        parents=client,
    ).add_argument("model_id")
    download = commands.subcommand(
        models, "download", "save the model's ONNX file", cmd_models_download, parents=client
    )
    download.add_argument("model_id")
    download.add_argument("out", nargs="?", default=".", help="file or folder (default: .)")
    noise = commands.subcommand(
        models,
        "noise",
        "the model's label-noise report: most confused class "
        "pairs, flip rates, latent correlations",
        cmd_models_noise,
        parents=client,
    )
    noise.add_argument("model_id")
    noise.add_argument("--top", type=int, default=10, help="class pairs to list")
    issues = commands.subcommand(
        models,
        "label-issues",
        "training rows the model thinks are mislabeled",
        cmd_models_label_issues,
        parents=client,
    )
    issues.add_argument("model_id")
    issues.add_argument(
        "--limit", type=int, help="issues to list (default 20; with --csv: every flagged row)"
    )
    issues.add_argument(
        "--csv", metavar="FILE", help="save them as CSV (index, file, given, suggested, score)"
    )
    issues.add_argument(
        "--all", action="store_true", help="with --csv: every row, not only flagged"
    )
