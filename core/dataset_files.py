"""Datasets as arrays: read, validate, split, standardise. numpy and Pillow only (no
torch here): the API validates uploads with these same functions before it stores
them, and the worker loads the stored file with them again.

Why one module of ~570 lines: each format's reader and the one validator it feeds
(``from_arrays``), with the limits they share.

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
import posixpath
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

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


def read_npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy array whose file ``fp`` is at, read from
    its header alone; ``fp`` is left at the first byte of the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


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
                shape, _fortran, dtype = read_npy_header(f)
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


def standardisation_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """The images an image split's standardisation is taken over: all of them, or
    ``limit`` chosen with ``seed`` (the same rows however the split is held)."""
    rows = np.arange(n)
    if n > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def channel_stats(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (C, 1, 1), float32, of images given as (C, pixels) arrays
    of values in [0, 1]; a constant channel gets std 1."""
    total = sq = None
    count = 0
    for image in images:
        values = image.astype(np.float64)
        total = values.sum(1) if total is None else total + values.sum(1)
        sq = (values**2).sum(1) if sq is None else sq + (values**2).sum(1)
        count += values.shape[1]
    if total is None or sq is None:
        raise ValueError("no images to standardise over")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return mean[:, None, None].astype(np.float32), std[:, None, None].astype(np.float32)


def save_npz(ds: ArrayDataset, path: str | Path) -> None:
    arrays = {k: v for k, v in vars(ds).items() if isinstance(v, np.ndarray)}
    np.savez(path, **arrays, class_names=np.asarray(ds.class_names, dtype=str))  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool
