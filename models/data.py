"""Datasets as arrays: read, validate, split, standardise. numpy and Pillow only (no
torch here): the API validates uploads with these same functions before it stores
them, and the worker loads the stored file with them again.

Formats:
- ``.npz`` with ``x_train``, ``y_train`` and optional ``x_val``, ``y_val``, ``x_test``,
  ``y_test``, ``class_names``; read with ``allow_pickle=False`` so a pickle inside is
  refused instead of executed, and a compressed bomb is refused before inflating.
- ``.csv`` with a ``label`` column (integers, or names mapped to sorted class names),
  every other column a numeric feature.
- ``.zip`` of class-named image folders ``train/<class>/*.png|jpg`` with optional
  ``val/`` and ``test/`` (one enclosing folder is allowed); images decoded with Pillow
  and resized to ``image_size`` x ``image_size``, scaled to [0, 1], shape [N, C, H, W].

Labels: multiclass ``y`` is an integer vector in [0, K); multilabel ``y`` is an
(N, K) 0/1 matrix. Inputs: vectors (N, D) or images (N, C, H, W).
Canonical form: x float32; multiclass y int64; multilabel y float32; class_names
filled in. Bad data raises ``DatasetError`` naming what is wrong.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import stat
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "val", "test")
ALLOWED_NPZ_KEYS = frozenset({f"{xy}_{s}" for xy in "xy" for s in SPLITS} | {"class_names"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_SIZE = 512
MAX_ZIP_ENTRIES = 200_000
# What one upload may expand to in memory (npy arrays as declared, canonical float32
# copies, decoded images), checked before anything is decompressed. The API passes
# settings.max_expanded_bytes; this is its default.
MAX_EXPANDED_BYTES = 1 << 30
MAX_ZIP_EXPANDED_BYTES = MAX_EXPANDED_BYTES  # kept for callers of the old name
MAX_CLASSES = 100_000  # a label of 10**9 must not build 10**9 class names
# Source pixels, read from an image's header before it is decoded (PixelBudget): one
# image at most MAX_IMAGE_PIXELS (a 36-megapixel photo passes, a 13000 x 13000 PNG
# that compresses to 164 KB does not); one request's images (an upload's zip, a predict
# call) at most the larger of that and, on average, SOURCE_SIDE_FACTOR x the side they
# are resized to, squared.
MAX_IMAGE_PIXELS = 6144 * 6144
SOURCE_SIDE_FACTOR = 8
ZIP_MAGIC = b"PK\x03\x04"


class DatasetError(ValueError):
    """The dataset is malformed; the message says what and where."""


@dataclass
class ArrayDataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return "multilabel" if self.y_train.ndim == 2 else "multiclass"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def counts(self) -> dict[str, int]:
        return {f"num_{s}": 0 if (x := self.split(s)[0]) is None else len(x) for s in SPLITS}


class TooLarge(DatasetError):
    """The upload would expand past an allowed size: in memory, on disk, in pixels (HTTP 413)."""


class PixelBudget:
    """The source pixels one request may decode (see MAX_IMAGE_PIXELS): ``take`` each
    image's size from its header, before decoding it; TooLarge past either cap."""

    def __init__(self, images: int, side: int):
        self.total = max(MAX_IMAGE_PIXELS, images * (SOURCE_SIDE_FACTOR * side) ** 2)
        self.left, self.side = self.total, side

    def take(self, width: int, height: int, name: str) -> None:
        pixels = width * height
        if pixels > MAX_IMAGE_PIXELS:
            raise TooLarge(
                f"{name} is {width}x{height} = {pixels} pixels; at most {MAX_IMAGE_PIXELS} per"
                " image are decoded: resize it first"
            )
        if pixels > self.left:
            raise TooLarge(
                f"the images of this request add up to more than {self.total} pixels (at most"
                f" {SOURCE_SIDE_FACTOR}x the side of {self.side} on average, or"
                f" {MAX_IMAGE_PIXELS} in all): resize them first"
            )
        self.left -= pixels


def load_dataset(source: str | Path | bytes, fmt: str | None = None) -> ArrayDataset:
    """Load and validate a ``.npz`` or ``.csv`` dataset from a path or raw bytes.

    No expansion bound here: the worker reads files the API already checked."""
    if isinstance(source, (str, Path)):
        fmt = fmt or Path(source).suffix.lstrip(".").lower()
        data = Path(source).read_bytes()
    else:
        data = source
    if fmt == "npz":
        return from_arrays(*read_npz(data, max_expanded_bytes=None))
    if fmt == "csv":
        return from_arrays(*read_csv(data))
    raise DatasetError(f"unsupported dataset format {fmt!r}: use .npz or .csv")


def read_upload(
    filename: str,
    data: bytes,
    *,
    image_size: int | None = None,
    grayscale: bool = False,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
) -> tuple[str, ArrayDataset]:
    """Read and validate an uploaded ``.npz``, ``.csv`` or image ``.zip``; return
    (format, canonical dataset). TooLarge when it would expand past ``max_expanded_bytes``."""
    fmt = posixpath.splitext(filename.lower())[1].lstrip(".")
    if fmt == "npz":
        arrays, names = read_npz(data, max_expanded_bytes=max_expanded_bytes)
    elif fmt == "csv":
        arrays, names = read_csv(data)
    elif fmt == "zip":
        arrays, names = read_image_zip(
            data, image_size or 32, grayscale, max_expanded_bytes=max_expanded_bytes
        )
    else:
        raise DatasetError(f"unsupported file type {filename!r}: upload a .npz, .csv or .zip")
    return fmt, from_arrays(arrays, names)


def npz_declared_bytes(npz: np.lib.npyio.NpzFile) -> int:
    """Bytes the arrays of a .npz take once read and made canonical, from each member's
    npy header alone (a few hundred bytes decompressed per member, never the data):
    numpy allocates the declared shape up front, so a small compressed file declaring
    huge arrays must be refused here. Labels count at 8 bytes (int64), the rest at
    least 4 (float32)."""
    archive = npz.zip
    assert archive is not None  # an open NpzFile
    total = 0
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        try:
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _fortran, dtype = read_header(f)
        except Exception as exc:
            raise DatasetError(f"array {name!r} has no readable npy header: {exc}") from None
        if any(int(dim) < 0 for dim in shape):
            raise DatasetError(f"array {name!r} declares a negative dimension: shape {shape}")
        if dtype.hasobject:
            raise DatasetError(f"array {name!r} holds Python objects (pickle), which are refused")
        count = 1
        for dim in shape:
            count *= int(dim)
        canonical = 8 if name.startswith("y_") else 4
        total += count * max(dtype.itemsize, canonical)
    return total


def read_npz(
    data: bytes, *, max_expanded_bytes: int | None = MAX_EXPANDED_BYTES
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    if not data.startswith(ZIP_MAGIC):  # np.load would try it as a pickle, then refuse that
        raise DatasetError("not a readable .npz file: not a zip archive (a .npz zips .npy arrays)")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # BadZipFile, ValueError, OSError: all "not an npz"
        raise DatasetError(f"not a readable .npz file: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError("not a .npz archive (a single .npy array was given)")
    with npz:
        unknown = set(npz.files) - ALLOWED_NPZ_KEYS
        if unknown:
            raise DatasetError(
                f"unexpected arrays in .npz: {sorted(unknown)}; allowed: {sorted(ALLOWED_NPZ_KEYS)}"
            )
        if max_expanded_bytes is not None:
            # A .npz is a zip: refuse a compressed bomb before any array is inflated,
            # by the sizes the zip declares and by the shapes the npy headers declare.
            assert npz.zip is not None  # an open NpzFile
            expanded = max(
                sum(info.file_size for info in npz.zip.infolist()), npz_declared_bytes(npz)
            )
            if expanded > max_expanded_bytes:
                raise TooLarge(
                    f".npz expands to {expanded} bytes in memory (the arrays' declared shapes "
                    f"and dtypes), at most {max_expanded_bytes} are accepted "
                    "(HETSERVE_MAX_EXPANDED_BYTES)"
                )
        arrays = {}
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except Exception as exc:
                raise DatasetError(f"array {key!r} is unreadable: {exc}") from None
    names = arrays.pop("class_names", None)
    if names is None:
        return arrays, None
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise DatasetError(
            f"class_names must be a 1-D array of strings, got dtype {names.dtype}, shape {list(names.shape)}"
        )
    return arrays, [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]


def read_csv(data: bytes) -> tuple[dict[str, np.ndarray], list[str] | None]:
    try:
        rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable UTF-8 .csv file: {exc}") from None
    if len(rows) < 2:
        raise DatasetError(".csv needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise DatasetError(f".csv has no 'label' column (columns: {header[:20]})")
    if len(header) < 2:
        raise DatasetError(".csv has no feature columns beside 'label'")
    label_col = header.index("label")
    labels, features = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f".csv line {line}: {len(row)} fields, the header has {len(header)}")
        labels.append(row[label_col].strip())
        try:
            features.append([float(v) for i, v in enumerate(row) if i != label_col])
        except ValueError as exc:
            raise DatasetError(f".csv line {line}: non-numeric feature ({exc})") from None
    x = np.asarray(features, dtype=np.float32)
    try:
        integers = [int(v) for v in labels]
    except ValueError:
        integers = None
    if integers is not None:
        try:
            return {"x_train": x, "y_train": np.asarray(integers, dtype=np.int64)}, None
        except OverflowError:
            big = str(max(integers, key=abs))
            big = big if len(big) <= 30 else big[:27] + "..."
            raise DatasetError(
                f".csv label {big} is out of range: class indices must fit in int64"
            ) from None
    else:
        names = sorted(set(labels))
        index = {name: i for i, name in enumerate(names)}
        return {
            "x_train": x,
            "y_train": np.asarray([index[v] for v in labels], dtype=np.int64),
        }, names


def safe_member_parts(name: str) -> list[str] | None:
    """Path parts of a zip entry; DatasetError if it would escape its folder; None for a directory."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"zip entry {name!r} has an absolute or Windows path")
    parts = name.split("/")
    if any(p in ("..", ".") for p in parts):
        raise DatasetError(f"zip entry {name!r} escapes its folder ('..' or '.' in the path)")
    if name.endswith("/"):
        return None
    return parts


def read_image_zip(
    data: bytes, image_size: int, grayscale: bool, *, max_expanded_bytes: int = MAX_EXPANDED_BYTES
) -> tuple[dict[str, np.ndarray], list[str]]:
    if not 4 <= image_size <= MAX_IMAGE_SIZE:
        raise DatasetError(f"image_size must be between 4 and {MAX_IMAGE_SIZE}, got {image_size}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"not a readable .zip file: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise DatasetError(
                f"zip has {len(infos)} entries, at most {MAX_ZIP_ENTRIES} are accepted"
            )
        expanded = sum(info.file_size for info in infos)
        if expanded > max_expanded_bytes:
            raise TooLarge(
                f"zip expands to {expanded} bytes, at most {max_expanded_bytes} are accepted "
                "(HETSERVE_MAX_EXPANDED_BYTES)"
            )
        files = []
        for info in infos:
            parts = safe_member_parts(info.filename)
            if parts is None or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            files.append((parts, info))
        # One enclosing folder (zip of "mydata/") is allowed: strip it.
        roots = {parts[0] for parts, _ in files}
        if len(roots) == 1 and roots.isdisjoint(SPLITS):
            files = [(parts[1:], info) for parts, info in files]
        by_split: dict[str, list[tuple[str, zipfile.ZipInfo]]] = {s: [] for s in SPLITS}
        for parts, info in files:
            if len(parts) != 3 or parts[0] not in SPLITS:
                raise DatasetError(
                    f"zip entry {info.filename!r} is not <split>/<class>/<image> with split train, val or test"
                )
            if not parts[2].lower().endswith(IMAGE_SUFFIXES):
                raise DatasetError(f"zip entry {info.filename!r} is not a .png or .jpg image")
            by_split[parts[0]].append((parts[1], info))
        if not by_split["train"]:
            raise DatasetError("zip has no train/<class>/ images")
        class_names = sorted({cls for cls, _ in by_split["train"]})
        index = {name: i for i, name in enumerate(class_names)}
        decoded = len(files) * (1 if grayscale else 3) * image_size * image_size * 4
        if decoded > max_expanded_bytes:
            raise TooLarge(
                f"{len(files)} images at {image_size}x{image_size} decode to {decoded} bytes, "
                f"at most {max_expanded_bytes} are accepted (HETSERVE_MAX_EXPANDED_BYTES): "
                "use a smaller image_size"
            )
        arrays = {}
        budget = PixelBudget(len(files), image_size)
        for split, entries in by_split.items():
            if not entries:
                continue
            entries.sort(key=lambda e: e[1].filename)
            unknown = sorted({cls for cls, _ in entries} - index.keys())
            if unknown:
                raise DatasetError(f"{split}/ has classes not in train/: {unknown}")
            arrays[f"x_{split}"] = np.stack(
                [_decode(archive, info, image_size, grayscale, budget) for _, info in entries]
            )
            arrays[f"y_{split}"] = np.asarray([index[cls] for cls, _ in entries], dtype=np.int64)
    return arrays, class_names


def _decode(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    size: int,
    grayscale: bool,
    budget: PixelBudget | None = None,
) -> np.ndarray:
    try:
        with archive.open(info) as f:
            return decode_image(f, size, grayscale, f"zip entry {info.filename!r}", budget)
    # corrupt deflate data, an unsupported compression method, an encrypted entry
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
        raise DatasetError(f"zip entry {info.filename!r} is not a decodable image: {exc}") from None


def decode_image(
    stream: IO[bytes], size: int, grayscale: bool, name: str, budget: PixelBudget | None = None
) -> np.ndarray:
    """One image → float32 [C, size, size] in [0, 1]: the preprocessing of training and
    of serving (predict's `images`), so both see the same pixels. Its header's size is
    taken from ``budget`` (the request's; by default a budget of its own) before it is
    decoded: TooLarge past MAX_IMAGE_PIXELS."""
    try:
        with Image.open(stream) as opened:  # reads the header only
            (budget or PixelBudget(1, size)).take(*opened.size, name)
            image = opened.convert("L" if grayscale else "RGB").resize(
                (size, size), Image.Resampling.BILINEAR
            )
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{name} is not a decodable image: {exc}") from None
    return pixels[None] if grayscale else pixels.transpose(2, 0, 1)


def from_arrays(arrays: dict[str, np.ndarray], class_names: list[str] | None) -> ArrayDataset:
    """Check shapes, dtypes, finiteness and labels; return the canonical dataset."""
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    for required in ("x_train", "y_train"):
        if required not in arrays:
            raise DatasetError(f"missing the required array {required!r}")
    multilabel = arrays["y_train"].ndim == 2
    out: dict[str, np.ndarray] = {}
    feature_shape = None
    num_classes: int | None = None
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise DatasetError(f"x_{split} and y_{split} must be given together")
        if x is None:
            continue
        assert y is not None  # given together, checked above
        for name, arr in ((f"x_{split}", x), (f"y_{split}", y)):
            if arr.dtype.kind not in "biuf":
                raise DatasetError(f"{name} must be numeric, got dtype {arr.dtype}")
            if arr.ndim == 0:
                raise DatasetError(f"{name} must be an array of rows, got a single number")
        if x.ndim not in (2, 4):
            raise DatasetError(
                f"x_{split} must be [N, D] vectors or [N, C, H, W] images, got shape {list(x.shape)}"
            )
        if feature_shape is None:
            feature_shape = x.shape[1:]
        elif x.shape[1:] != feature_shape:
            raise DatasetError(
                f"x_{split} has per-example shape {list(x.shape[1:])}, x_train has {list(feature_shape)}"
            )
        if len(x) == 0:
            raise DatasetError(f"x_{split} is empty")
        if len(x) != len(y):
            raise DatasetError(
                f"x_{split} has {len(x)} rows but y_{split} has {len(y)} (mismatched lengths)"
            )
        with np.errstate(over="ignore"):  # before the check: 1e300 is finite in float64 only
            x = x.astype(np.float32)
        finite_rows = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite_rows.all():
            raise DatasetError(
                f"x_{split} contains NaN or inf in float32 (first at row "
                f"{int(np.argmin(finite_rows))})"
            )
        if multilabel:
            if y.ndim != 2 or not np.isin(y, (0, 1)).all():
                raise DatasetError(
                    f"multilabel y_{split} must be an [N, K] array holding only 0 and 1"
                )
            if num_classes is not None and y.shape[1] != num_classes:
                raise DatasetError(f"y_{split} has {y.shape[1]} labels, y_train has {num_classes}")
            num_classes = y.shape[1]
            y = y.astype(np.float32)
        else:
            if y.ndim != 1:
                raise DatasetError(
                    f"y_{split} must be a vector of class indices, got shape {list(y.shape)}"
                )
            if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
                raise DatasetError(
                    f"y_{split} must hold whole class indices (found NaN or a fraction)"
                )
            y = y.astype(np.int64)
            if (y < 0).any():
                raise DatasetError(
                    f"labels out of range: y_{split} has a negative label ({int(y.min())})"
                )
        out[f"x_{split}"], out[f"y_{split}"] = x, y

    if not multilabel:
        largest = max(int(out[f"y_{s}"].max()) for s in SPLITS if f"y_{s}" in out)
        num_classes = len(class_names) if class_names else largest + 1
        if num_classes > MAX_CLASSES:
            raise DatasetError(f"{num_classes} classes: at most {MAX_CLASSES} are accepted")
        if largest >= num_classes:
            raise DatasetError(
                f"labels out of range: found label {largest} but only {num_classes} class names"
            )
    assert num_classes is not None  # set from y_train above
    if num_classes < 2:
        raise DatasetError(f"need at least 2 classes, got {num_classes}")
    if num_classes > MAX_CLASSES:
        raise DatasetError(f"{num_classes} classes: at most {MAX_CLASSES} are accepted")
    if not multilabel and len(np.unique(out["y_train"])) < 2:
        raise DatasetError("y_train holds fewer than 2 distinct classes")
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise DatasetError(f"{len(names)} class_names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise DatasetError("class_names must be unique")
    return ArrayDataset(**out, class_names=names)


def validate(ds: ArrayDataset) -> ArrayDataset:
    """``from_arrays`` for an ArrayDataset: a checked, canonical copy."""
    arrays = {f"{xy}_{s}": getattr(ds, f"{xy}_{s}") for xy in "xy" for s in SPLITS}
    return from_arrays(arrays, list(ds.class_names) or None)


def validation_rows(n: int, fraction: float) -> int:
    """How many of ``n`` training rows become the validation split; at least one stays."""
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise DatasetError(f"too few training rows ({n}) to split off a validation set")
    return n_val


def with_validation_split(ds: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    """Carve a seeded validation split out of train when none is given."""
    if ds.x_val is not None:
        return ds
    n = len(ds.x_train)
    n_val = validation_rows(n, fraction)
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return replace(
        ds,
        x_train=ds.x_train[train],
        y_train=ds.y_train[train],
        x_val=ds.x_train[val],
        y_val=ds.y_train[val],
    )


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the training set: per feature for vectors, per channel for images.

    Shapes broadcast against one example: (D,) or (C, 1, 1).
    """
    axes = (0,) if x_train.ndim == 2 else (0, 2, 3)
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    std = np.where(std < 1e-6, 1.0, std)  # constant features pass through unscaled
    if x_train.ndim == 4:
        mean, std = mean[:, None, None], std[:, None, None]
    return mean.astype(np.float32), std.astype(np.float32)


def save_npz(ds: ArrayDataset, path: str | Path) -> None:
    arrays = {k: v for k, v in vars(ds).items() if isinstance(v, np.ndarray)}
    np.savez(path, **arrays, class_names=np.asarray(ds.class_names, dtype=str))  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool


# -- datasets by reference: image folders and .npz files that stay where they are ------

MANIFEST_VERSION = 1
DEFAULT_SAMPLE_DECODE = 32
MAX_FOLDER_FILES = 10_000_000
# check_manifest in object storage: a HEAD per object up to this many, else one listing
HEAD_AT_MOST = 8
S3_EXTRA = "s3:// datasets need the s3 extra: install hetserve[s3] (s3fs)"


class NotAllowed(DatasetError):
    """The path is outside the allowed roots (or a symlink leads outside them): HTTP 403."""


class MissingExtra(DatasetError):
    """The URI needs an optional extra that is not installed (HTTP 422)."""


def within_roots(path: str | Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


def resolve_reference(path: str | Path, roots: Sequence[str | Path]) -> Path:
    """The real path of a dataset reference; NotAllowed unless it lies under one of
    ``roots`` (after following every symlink, the roots' own included)."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not within_roots(path, real_roots):
        raise NotAllowed(f"{path} is outside the allowed dataset roots")
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class Entry:
    """One name in a listed folder: kind "file", "directory" or "other"; a file's
    size and stamp (what tells that it changed: mtime_ns on disk, the ETag of an object)."""

    name: str
    kind: str
    size: int = 0
    stamp: int | str | None = None


class DataStore:
    """A dataset by reference's folder (or the folder of its ``.npz``) through an fsspec
    filesystem, so that the layout rules, the manifest and its checks are written once
    for every backend: ``LocalStore`` (fsspec's LocalFileSystem) and ``S3Store`` (s3fs).
    Paths below ``root`` are relative, '/'-separated; ``stamp_key`` names a file's stamp
    in the manifest (``stamps_key`` the column of an image folder's split)."""

    stamp_key = "mtime_ns"
    stamps_key = "mtimes_ns"

    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"

    @property
    def fs(self) -> Any:
        raise NotImplementedError

    @property
    def uri(self) -> str:
        """The manifest's ``root``: what ``store_for_root`` opens again."""
        return self.root

    def full(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        """The Entry of one fsspec ``info`` dict."""
        raise NotImplementedError

    def listdir(self, rel: str) -> list[Entry]:
        """The visible names of a folder (a leading '.' is hidden), sorted."""
        base = self.full(rel)
        entries = []
        for info in self.fs.ls(base, detail=True):
            full = str(info["name"]).rstrip("/")
            name = full.rsplit("/", 1)[-1]
            if full == base.rstrip("/") or not name or name.startswith("."):
                continue  # the folder itself (an object store's folder marker), hidden
            entries.append(self.entry(name, info))
        return sorted(entries, key=lambda e: e.name)

    def info(self, rel: str) -> Entry:
        return self.entry(rel.rsplit("/", 1)[-1], self.fs.info(self.full(rel)))

    def open(self, rel: str) -> IO[bytes]:
        return self.fs.open(self.full(rel), "rb")  # type: ignore[no-any-return]

    def now(self, f: Any) -> tuple[int, int | str | None]:
        """(size, stamp) of an opened file, as it is being read."""
        raise NotImplementedError

    def open_checked(self, rel: str, size: int, stamp: int | str | None) -> IO[bytes]:
        """``open``, or DatasetError naming ``rel`` if it is missing or its size or stamp
        is no longer the manifest's."""
        try:
            f = self.open(rel)
        except FileNotFoundError:
            raise self.missing(rel) from None
        try:
            now = self.now(f)
        except BaseException:
            f.close()
            raise
        if now != (size, stamp):
            f.close()
            raise self.changed(rel, (size, stamp), now)
        return f

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        """(size, stamp) of each of ``rels`` now; None for a missing one."""
        raise NotImplementedError

    def missing(self, rel: str) -> DatasetError:
        return DatasetError(
            f"dataset file {rel} is missing under {self.uri} since the dataset was registered"
        )

    def changed(
        self, rel: str, then: tuple[int, int | str | None], now: tuple[int, int | str | None]
    ) -> DatasetError:
        return DatasetError(
            f"dataset file {rel} under {self.uri} changed since the dataset was registered "
            f"(size {then[0]} -> {now[0]}, {self.stamp_key} {then[1]} -> {now[1]}): "
            "register it again"
        )


class LocalStore(DataStore):
    """A folder on disk: fsspec's LocalFileSystem lists it; a file's stamp is its
    mtime_ns; a symlink is followed only if it stays within ``roots`` (else NotAllowed)."""

    def __init__(self, root: str, roots: list[Path] | None = None):
        super().__init__(root)
        self.roots = roots

    @property
    def fs(self) -> Any:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        path = str(info["name"])
        if info.get("islink") and self.roots is not None and not within_roots(path, self.roots):
            rel = os.path.relpath(path, self.root)
            raise NotAllowed(f"{rel} is a symlink leading outside the allowed roots")
        st = os.stat(path)  # follows a symlink: the size and mtime_ns of what is read
        kind = (
            "directory"
            if stat.S_ISDIR(st.st_mode)
            else "file"
            if stat.S_ISREG(st.st_mode)
            else "other"
        )
        return Entry(name, kind, int(st.st_size), int(st.st_mtime_ns))

    def now(self, f: Any) -> tuple[int, int | str | None]:
        st = os.fstat(f.fileno())
        return int(st.st_size), int(st.st_mtime_ns)

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        out: dict[str, tuple[int, int | str | None] | None] = {}
        for rel in rels:  # one stat per file, nothing read
            try:
                st = os.stat(self.full(rel))
            except FileNotFoundError:
                out[rel] = None
            else:
                out[rel] = (int(st.st_size), int(st.st_mtime_ns))
        return out


class S3Store(DataStore):
    """A prefix in an S3 bucket (``root`` is "bucket/prefix") through s3fs, imported only
    here; credentials from the standard AWS variables, ``endpoint_url`` for MinIO and
    the like. A file's stamp is the object's ETag. The filesystem is made anew in each
    process (s3fs is not fork-safe: the DataLoader's processes each open their own)."""

    stamp_key = "etag"
    stamps_key = "etags"

    def __init__(self, root: str, endpoint_url: str | None = None):
        super().__init__(root)
        self.endpoint_url = endpoint_url
        self._fs: Any = None
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_fs": None, "_pid": 0}

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._pid = s3_filesystem(self.endpoint_url), os.getpid()
        return self._fs

    @property
    def uri(self) -> str:
        return f"s3://{self.root}"

    @staticmethod
    def etag(info: dict[str, Any]) -> str | None:
        etag = info.get("ETag")
        return None if etag is None else str(etag).strip('"')

    def entry(self, name: str, info: dict[str, Any]) -> Entry:
        kind = {"file": "file", "directory": "directory"}.get(info.get("type", ""), "other")
        return Entry(name, kind, int(info.get("size") or 0), self.etag(info))

    def now(self, f: Any) -> tuple[int, int | str | None]:
        # s3fs heads the object when it opens it and reads it with If-Match on that ETag:
        # what is compared here is what is read.
        return int(f.details["size"]), self.etag(f.details)

    def stamps(self, rels: list[str]) -> dict[str, tuple[int, int | str | None] | None]:
        out: dict[str, tuple[int, int | str | None] | None] = {}
        if len(rels) <= HEAD_AT_MOST:  # an .npz: its root is a folder that may hold much else
            for rel in rels:
                try:
                    info = self.fs.info(self.full(rel))
                except FileNotFoundError:
                    out[rel] = None
                else:
                    out[rel] = (int(info["size"]), self.etag(info))
            return out
        listing = self.fs.find(self.root, detail=True)  # one LIST per 1000 objects
        for rel in rels:
            info = listing.get(self.full(rel))
            out[rel] = None if info is None else (int(info["size"]), self.etag(info))
        return out


def s3_filesystem(endpoint_url: str | None) -> Any:
    """An s3fs filesystem, uncached (a changed object must be seen): MissingExtra
    without the s3 extra."""
    try:
        import s3fs
    except ImportError:
        raise MissingExtra(S3_EXTRA) from None
    return s3fs.S3FileSystem(
        endpoint_url=endpoint_url, skip_instance_cache=True, use_listings_cache=False
    )


def s3_key(uri: str) -> str:
    """The "bucket/prefix" of ``s3://bucket/prefix``; DatasetError for one that a key
    comparison could misread (no bucket, an empty, '.' or '..' segment)."""
    parts = uri.removeprefix("s3://").rstrip("/").split("/")
    if not parts[0] or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"{uri} is not s3://bucket/prefix (no empty, '.' or '..' part)")
    return "/".join(parts)


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def store_for_root(root: str, s3_endpoint_url: str | None = None) -> DataStore:
    """The store of a manifest's ``root``."""
    if is_s3(root):
        return S3Store(s3_key(root), s3_endpoint_url)
    return LocalStore(root)


def locate(
    path: str | Path, roots: Sequence[str | Path], s3_endpoint_url: str | None
) -> tuple[DataStore, str | None]:
    """(the store of a folder, None), or (the store of its folder, name) for a file.
    NotAllowed outside every root; DatasetError if it does not exist."""
    if is_s3(path):
        key = s3_key(str(path))
        s3_roots = [s3_key(str(r)) for r in roots if is_s3(r)]
        if not any(key == r or key.startswith(r + "/") for r in s3_roots):
            raise NotAllowed(f"{path} is outside the allowed dataset roots")
        store = S3Store(key, s3_endpoint_url)
        try:
            info = store.fs.info(key)
        except FileNotFoundError:
            raise DatasetError(f"{path} does not exist") from None
        if info.get("type") == "file":
            parent, name = key.rsplit("/", 1)
            return S3Store(parent, s3_endpoint_url), name
        return store, None
    real_roots = [Path(os.path.realpath(r)) for r in roots if not is_s3(r)]
    if not os.path.lexists(path):
        raise DatasetError(f"{path} does not exist")
    real = resolve_reference(path, real_roots)
    if real.is_file():
        return LocalStore(str(real.parent), real_roots), real.name
    if not real.is_dir():
        raise DatasetError(f"{path} is neither a folder nor a .npz file")
    return LocalStore(str(real), real_roots), None


def scan_reference(
    path: str | Path,
    roots: Sequence[str | Path],
    *,
    image_size: int = 32,
    grayscale: bool = False,
    sample: int = DEFAULT_SAMPLE_DECODE,
    max_expanded_bytes: int = MAX_EXPANDED_BYTES,
    s3_endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Validate a dataset in place and return its manifest: an image-folder tree
    (``train/<class>/*.png|jpg``, optional ``val/`` and ``test/``) or an ``.npz`` file,
    a local path or an ``s3://bucket/prefix`` URI. ``roots`` may hold both kinds.
    NotAllowed (403) for a path outside ``roots`` or a symlink leading out of them;
    DatasetError (422) for a bad layout or an undecodable sample image; MissingExtra
    (422) for s3:// without s3fs."""
    store, name = locate(path, roots, s3_endpoint_url)
    if name is not None:
        if not name.lower().endswith(".npz"):
            raise DatasetError(f"{path} is a file but not a .npz: give a .npz or a folder")
        return _scan_npz(store, name, max_expanded_bytes)
    return _scan_folder(store, image_size, grayscale, sample)


def _scan_npz(store: DataStore, name: str, max_expanded_bytes: int) -> dict[str, Any]:
    entry = store.info(name)  # before the read: a change after it fails the job, never passes
    if entry.size > max_expanded_bytes:  # refused from its size, never read
        raise TooLarge(
            f"{name} is {entry.size} bytes, at most {max_expanded_bytes} are accepted "
            "(HETSERVE_MAX_EXPANDED_BYTES)"
        )
    with store.open(name) as f:
        data = f.read()
    ds = from_arrays(*read_npz(data, max_expanded_bytes=max_expanded_bytes))
    return {
        "version": MANIFEST_VERSION,
        "format": "npz-ref",
        "root": store.uri,
        "file": {"path": name, "size": entry.size, store.stamp_key: entry.stamp},
        "class_names": ds.class_names,
        "task": ds.task,
        "input_shape": ds.input_shape,
        "counts": ds.counts(),
    }


def _scan_folder(store: DataStore, size: int, grayscale: bool, sample: int) -> dict[str, Any]:
    if not 4 <= size <= MAX_IMAGE_SIZE:
        raise DatasetError(f"image_size must be between 4 and {MAX_IMAGE_SIZE}, got {size}")
    top = {e.name: e for e in store.listdir("")}
    if "train" not in top or top["train"].kind != "directory":
        raise DatasetError(f"{store.uri} has no train/ folder (train/<class>/*.png|jpg)")
    unknown = sorted(set(top) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{store.uri} holds {unknown}: only train/, val/ and test/ are read")
    splits: dict[str, dict[str, Any]] = {}
    total = 0
    class_names: list[str] = []
    for split in SPLITS:
        if split not in top:
            continue
        if top[split].kind != "directory":
            raise DatasetError(f"{split} is not a folder")
        classes = store.listdir(split)
        for e in classes:
            if e.kind != "directory":
                raise DatasetError(
                    f"{split}/{e.name} is not a class folder (<split>/<class>/<image>)"
                )
        if split == "train":
            class_names = [e.name for e in classes]
            if len(class_names) < 2:
                raise DatasetError(f"need at least 2 classes, train/ has {len(class_names)}")
        index = {name: i for i, name in enumerate(class_names)}
        cols: dict[str, list[Any]] = {"paths": [], "labels": [], "sizes": [], store.stamps_key: []}
        for e in classes:
            if e.name not in index:
                raise DatasetError(f"{split}/ has a class not in train/: {e.name!r}")
            images = store.listdir(f"{split}/{e.name}")
            if not images and split == "train":
                raise DatasetError(f"train/{e.name}/ holds no images")
            for image in images:
                rel = f"{split}/{e.name}/{image.name}"
                if image.kind != "file":
                    raise DatasetError(f"{rel} is not <split>/<class>/<image> (a folder?)")
                if not image.name.lower().endswith(IMAGE_SUFFIXES):
                    raise DatasetError(f"{rel} is not a .png or .jpg image")
                cols["paths"].append(rel)
                cols["labels"].append(index[e.name])
                cols["sizes"].append(image.size)
                cols[store.stamps_key].append(image.stamp)
        total += len(cols["paths"])
        if total > MAX_FOLDER_FILES:
            raise DatasetError(f"more than {MAX_FOLDER_FILES} images: not accepted")
        if cols["paths"]:
            splits[split] = cols
    manifest = {
        "version": MANIFEST_VERSION,
        "format": "imagefolder",
        "root": store.uri,
        "image_size": size,
        "grayscale": grayscale,
        "class_names": class_names,
        "task": "multiclass",
        "input_shape": [1 if grayscale else 3, size, size],
        "counts": {f"num_{s}": len(splits.get(s, {"paths": []})["paths"]) for s in SPLITS},
        "splits": splits,
    }
    # A sample spread over every split must decode, as training will decode it.
    everything = [p for s in splits.values() for p in s["paths"]]
    for i in np.unique(
        np.linspace(0, len(everything) - 1, min(sample, len(everything))).astype(int)
    ):
        with store.open(everything[i]) as f:
            decode_image(f, size, grayscale, everything[i])
    return manifest


def manifest_files(
    manifest: dict[str, Any], store: DataStore | None = None
) -> Iterator[tuple[str, int, int | str | None]]:
    """(relative path, size, stamp) of every file a manifest records."""
    store = store or store_for_root(manifest["root"])
    if manifest["format"] == "npz-ref":
        f = manifest["file"]
        yield f["path"], f["size"], f[store.stamp_key]
        return
    for cols in manifest["splits"].values():
        yield from zip(cols["paths"], cols["sizes"], cols[store.stamps_key], strict=True)


def check_manifest(manifest: dict[str, Any], s3_endpoint_url: str | None = None) -> None:
    """DatasetError naming the first file that is missing or changed (size, or mtime_ns
    on disk, ETag in object storage) since the dataset was registered. Nothing read: one
    stat per file on disk, one listing per 1000 objects."""
    store = store_for_root(manifest["root"], s3_endpoint_url)
    files = list(manifest_files(manifest, store))
    now = store.stamps([rel for rel, _, _ in files])
    for rel, size, stamp in files:
        current = now[rel]
        if current is None:
            raise store.missing(rel)
        if current != (size, stamp):
            raise store.changed(rel, (size, stamp), current)


class ImageFiles:
    """Images in a DataStore, decoded on demand, standing in for an [N, C, H, W] array:
    ``x[i:j]`` decodes those rows (float32 in [0, 1], resized as at predict), ``x[index
    array]`` is a lazy subset, ``x.load(i)`` one image. Given the manifest's ``sizes``
    and ``stamps``, each file is checked as it is opened (DatasetError naming it)."""

    ndim = 4

    def __init__(
        self,
        root: str | Path | DataStore,
        paths: list[str],
        size: int,
        grayscale: bool,
        *,
        sizes: list[int] | None = None,
        stamps: list[int | str | None] | None = None,
    ):
        self.store = root if isinstance(root, DataStore) else LocalStore(str(root))
        self.paths = list(paths)
        self.sizes, self.stamps = sizes, stamps
        self.size, self.grayscale = size, grayscale
        self.num_workers = 0  # the worker sets its DataLoader processes

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 1 if self.grayscale else 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        rel = self.paths[i]
        if self.sizes is None or self.stamps is None:
            f = self.store.open(rel)
        else:
            f = self.store.open_checked(rel, self.sizes[i], self.stamps[i])
        try:
            with f:
                return decode_image(f, self.size, self.grayscale, rel)
        except OSError as exc:  # e.g. the object changed between its head and its read
            raise DatasetError(f"dataset file {rel} under {self.store.uri}: {exc}") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            rows = range(len(self))[key]
            if not rows:
                return np.zeros((0, *self.shape[1:]), np.float32)
            return np.stack([self.load(i) for i in rows])
        if isinstance(key, (int, np.integer)):
            return self.load(int(key))
        picked = [int(i) for i in np.asarray(key)]
        subset = ImageFiles(
            self.store,
            [self.paths[i] for i in picked],
            self.size,
            self.grayscale,
            sizes=None if self.sizes is None else [self.sizes[i] for i in picked],
            stamps=None if self.stamps is None else [self.stamps[i] for i in picked],
        )
        subset.num_workers = self.num_workers
        return subset

    def standardisation(self, limit: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std (C, 1, 1) over up to ``limit`` images, one at a time."""
        rows = np.arange(len(self))
        if len(rows) > limit:
            rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
        c = self.shape[1]
        total, sq, count = np.zeros(c), np.zeros(c), 0
        for i in rows:
            pixels = self.load(int(i)).reshape(c, -1).astype(np.float64)
            total += pixels.sum(1)
            sq += (pixels**2).sum(1)
            count += pixels.shape[1]
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return mean[:, None, None].astype(np.float32), std[:, None, None].astype(np.float32)


def open_manifest(manifest: dict[str, Any], s3_endpoint_url: str | None = None) -> ArrayDataset:
    """The dataset a manifest describes, after check_manifest: an ``.npz`` is read
    whole; an image folder becomes ImageFiles (decoded as training streams it, each
    file checked against the manifest as it is opened)."""
    check_manifest(manifest, s3_endpoint_url)
    store = store_for_root(manifest["root"], s3_endpoint_url)
    if manifest["format"] == "npz-ref":
        f = manifest["file"]
        with store.open_checked(f["path"], f["size"], f[store.stamp_key]) as opened:
            return load_dataset(opened.read(), "npz")
    arrays: dict[str, Any] = {}
    for split, cols in manifest["splits"].items():
        arrays[f"x_{split}"] = ImageFiles(
            store,
            cols["paths"],
            manifest["image_size"],
            manifest["grayscale"],
            sizes=cols["sizes"],
            stamps=cols[store.stamps_key],
        )
        arrays[f"y_{split}"] = np.asarray(cols["labels"], dtype=np.int64)
    return ArrayDataset(**arrays, class_names=list(manifest["class_names"]))
