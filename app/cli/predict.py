"""``hetserve predict``: rows from a .npy, .npz or .csv file, or image files, through a
served model; a few lines per row for a person, the API's answer with --json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.cli.arguments import Commands
from app.cli.connect import client_from
from app.cli.output import CliError, print_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_inputs(paths: list[str], rows: int | None, array: str | None) -> tuple[str, Any]:
    """("inputs", rows) from a .npy, .npz or .csv file, or ("images", paths) for image files."""
    if all(p.lower().endswith(IMAGE_SUFFIXES) for p in paths):
        return "images", [Path(p) for p in paths]
    if len(paths) != 1:
        raise CliError("give one .npy, .npz or .csv file, or image files (.png, .jpg)")
    import numpy as np

    path = Path(paths[0])
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                name = array or next(
                    (n for n in ("x_test", "x_val", "x_train", "x") if n in arrays), None
                )
                if name is None or name not in arrays:
                    raise CliError(
                        f"{path}: no array {name or 'x_test'} (has {', '.join(arrays.files)}); choose one with --array"
                    )
                x = arrays[name]
        elif suffix == ".csv":
            x = _read_csv(path)
        else:
            raise CliError(f"{path}: predict reads .npy, .npz, .csv or image files")
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if x.ndim == 1:
        x = x[None, :]
    return "inputs", x[:rows] if rows else x


def _read_csv(path: Path):
    """Numeric rows; a header line is skipped, and its ``label`` column dropped (so a
    training .csv can be fed back)."""
    import numpy as np

    with path.open() as f:
        first = f.readline().strip().split(",")
    try:
        [float(v) for v in first]
        header = None
    except ValueError:
        header = [h.strip() for h in first]
    x = np.loadtxt(path, delimiter=",", skiprows=0 if header is None else 1, ndmin=2)
    if header is not None and "label" in header:
        x = np.delete(x, header.index("label"), axis=1)
    return x.astype(np.float32)


def cmd_predict(args: argparse.Namespace) -> int:
    kind, values = read_inputs(args.files, args.rows, args.array)
    options = {
        "mc_samples": args.mc_samples,
        "seed": args.seed,
        "predictive": args.predictive,
        "top_k": args.top_k,
        "correlated_pairs": args.correlated_pairs,
    }
    client = client_from(args)
    if kind == "images":
        result = client.predict(args.model_id, images=values, **options)
    else:
        result = client.predict(args.model_id, values, **options)
    if args.json:
        print_json(
            {
                "model_id": result.model_id,
                "mc_samples": result.mc_samples,
                "predictive": result.predictive,
                "predictions": result.rows,
            }
        )
        return 0
    how = (
        "noise-free predictive"
        if result.predictive == "noise_free"
        else f"S={result.mc_samples} samples"
    )
    print(f"model {result.model_id}, {how}:")
    for i, row in enumerate(result.rows):
        print(f"row {i}:")
        print(prediction_summary(row))
    return 0


def prediction_summary(row: dict) -> str:
    """A few lines for a person; the full row (probs, prob_std, mc_stderr, noise_std per
    class) is what the API returns (--json)."""
    lines = [
        f"  predicted {row['class_name']} (class {row['label']}), confidence {row['confidence']:.3f}"
    ]
    entropy, expected = row.get("entropy"), row.get("expected_entropy")
    if isinstance(entropy, float) and isinstance(expected, float):
        lines.append(f"  entropy {entropy:.3f}, expected entropy {expected:.3f}")
    elif isinstance(entropy, float):
        lines.append(f"  entropy {entropy:.3f}")
    if row.get("top_k"):
        top = ", ".join(f"{t['class_name']} {t['prob']:.3f}" for t in row["top_k"])
        lines.append(f"  top {len(row['top_k'])}: {top}")
    if row.get("correlated_pairs"):
        pairs = ", ".join(
            f"{tuple(p['classes'])} {p['correlation']:+.2f}" for p in row["correlated_pairs"]
        )
        lines.append(f"  latent correlation of likely class pairs: {pairs}")
    return "\n".join(lines)


def add_commands(commands: Commands) -> None:
    predict = commands.command(
        "predict",
        "predict with uncertainty from a .npy, .npz or .csv file, or image files",
        cmd_predict,
        parents=[commands.client],
    )
    predict.add_argument("model_id", help="model id or alias")
    predict.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".npy [N, ...], .npz (x_test, or --array), .csv (rows of features; "
        "a header's label column is dropped) or .png/.jpg images",
    )
    predict.add_argument("--array", help=".npz: the array to read (default x_test)")
    predict.add_argument("--rows", type=int, help="only the first N rows")
    predict.add_argument("--mc-samples", type=int, help="S, Monte-Carlo samples")
    predict.add_argument("--seed", type=int, help="reproducible draws")
    predict.add_argument(
        "--predictive",
        choices=["marginal", "noise_free"],
        help="marginal: the MC predictive (default); noise_free: softmax of "
        "the mean logits, no sampling",
    )
    predict.add_argument("--top-k", type=int, help="list the k most probable classes")
    predict.add_argument(
        "--correlated-pairs",
        action="store_true",
        help="list each row's most correlated class pairs",
    )
