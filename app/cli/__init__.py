"""The ``hetserve`` command.

Two kinds of subcommands:

- local processes: ``up`` (what ``make run`` runs: migrations, then the API and one
  worker as child processes on embedded defaults, until Ctrl-C), ``migrate``, ``gc``,
  ``backup`` and ``restore`` (against the store and data folder the settings name);
- HTTP clients of a running service, all through the Python client ``hetserve.Client``:
  ``datasets``, ``train``, ``jobs``, ``models``, ``aliases``, ``predict``, ``demo``. They
  find the service at ``--url`` / ``HETSERVE_URL`` (default: HETSERVE_HOST:HETSERVE_PORT)
  and authenticate with ``--key=KEY`` / ``HETSERVE_API_KEY``, else the first of
  ``HETSERVE_API_KEYS``, else the key file the service wrote into the data folder
  (app/cli/connect.py).

One module per command or group: up.py (the local process supervisor), maintenance.py
(migrate, gc, backup, restore), datasets.py, jobs.py (train and jobs), models.py,
aliases.py, predict.py, demo.py (demo, demo-data), each with the parser of its commands
(``add_commands``; arguments.py says how); parser.py assembles them, progress.py draws a
job's progress bar, output.py holds what they all print with. ``main`` is the console
script (``hetserve``; ``python -m app.cli`` runs it too).

Stdlib, httpx and tqdm at import: no torch, so the command starts fast and works from
the API image. ``demo`` and ``demo-data`` alone need the training side (sklearn's
digits, models/) and run it in a child process.
"""

from __future__ import annotations

import os
import sys

import hetserve
from app.cli.connect import auth_hint
from app.cli.output import CliError
from app.cli.parser import build_parser


def _join_key(argv: list[str]) -> list[str]:
    """``--key -abc`` as ``--key=-abc``: --key always takes a value, so the next word is it
    even when it starts with '-' (which argparse would take for an option)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--key" and i + 1 < len(argv):
            out.append(f"--key={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_key(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `hetserve jobs show ID | head`: the reader left. Exit quietly; stdout goes to
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a tool killed by the signal
    except hetserve.AuthenticationError as exc:
        print(f"hetserve: {exc}\nhetserve: {auth_hint(args)}", file=sys.stderr)
        return 1
    except hetserve.ConnectionFailed as exc:
        print(
            f"hetserve: {exc} (is `hetserve up` running? the URL is --url / HETSERVE_URL)",
            file=sys.stderr,
        )
        return 1
    except (CliError, hetserve.HetserveError, FileNotFoundError) as exc:
        print(f"hetserve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
