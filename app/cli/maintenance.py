"""The commands that act on the store and the data folder the settings name, locally (no
service needed): ``migrate``, ``gc``, ``backup``, ``restore``. SQLAlchemy, Alembic and
app/retention are imported by the command that runs, so the others start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.arguments import Commands
from app.cli.output import CliError, print_json, redact
from app.settings import Settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from app import db  # SQLAlchemy + Alembic: only the commands that touch the store pay for it

    settings = Settings()
    db.migrate(settings)
    print(f"migrated {redact(settings.resolved_database_url)} to head")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from app.retention.gc import collect_garbage

    report = collect_garbage(Settings(), dry_run=args.dry_run)
    if args.json:
        print_json(report.to_dict())
        return 0
    for label, items in (
        ("artifact", report.artifacts),
        ("checkpoints of job", report.checkpoints),
        ("temporary", report.temporary),
    ):
        for item in items:
            print(f"{'would remove' if report.dry_run else 'removed'} {label} {item}")
    print(report.summary())
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from app.retention.backup import BackupError, backup

    settings = Settings()
    try:
        manifest = backup(settings, Path(args.dir))
    except BackupError as exc:
        raise CliError(str(exc)) from None
    print(
        f"backed up {redact(settings.resolved_database_url)} ({manifest['store']}, revision "
        f"{manifest['revision']}) and {manifest['artifact_files']} artifact file(s), "
        f"{manifest['artifact_bytes']} bytes, and {manifest['checkpoint_files']} checkpoint "
        f"file(s) of jobs under way, to {args.dir}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from app.retention.backup import BackupError, restore

    settings = Settings()
    try:
        result = restore(settings, Path(args.dir), force=args.force)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    print(
        f"restored {redact(settings.resolved_database_url)} from {args.dir} (backup of "
        f"{result['created_at']}) and {result['restored_artifact_files']} artifact file(s) "
        f"and {result['restored_checkpoint_files']} checkpoint file(s) into {settings.data_dir}"
    )
    if result["missing_artifacts"]:
        print(
            f"hetserve: {len(result['missing_artifacts'])} file(s) the store refers to are "
            f"missing: {', '.join(result['missing_artifacts'][:5])}",
            file=sys.stderr,
        )
        return 1
    return 0


def add_commands(commands: Commands) -> None:
    commands.command("migrate", "bring the store's schema to head", cmd_migrate)
    gc = commands.command(
        "gc",
        "remove unreferenced artifacts, checkpoints of ended jobs and "
        "stale temporary files from the data folder (runs locally)",
        cmd_gc,
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.epilog = "Files no row refers to are removed once older than HETSERVE_GC_GRACE_S."
    backup = commands.command(
        "backup",
        "back up the store, then the artifacts, into a new "
        "folder (runs locally; PostgreSQL needs pg_dump)",
        cmd_backup,
    )
    backup.add_argument("dir", help="the folder to create (or an empty one)")
    restore = commands.command(
        "restore",
        "restore a backup folder into the store and data folder (stop the service first)",
        cmd_restore,
    )
    restore.add_argument("dir", help="a folder `hetserve backup` wrote")
    restore.add_argument("--force", action="store_true", help="replace an existing store")
