"""A predict request's ``inputs`` or ``images`` → one float32 array ``[N, *input_shape]``.

Everything a client can get wrong is refused with an ``InputError`` that names the
field and the index (``inputs[3][5]``, ``images[2]``), turned into a 422 by the route:
wrong rank or length, a non-number (JSON strings, booleans, null), NaN or infinity
(Python's JSON parser accepts ``NaN`` and ``Infinity``), a value beyond float32's range,
too many rows, an image that is not valid base64 or not a decodable PNG/JPEG, an image
(or all of them) with more pixels than core.dataset_files.PixelBudget allows, read from the
headers before anything is decoded.

Images are decoded exactly as at training time by app/uploads.py's own decoder
(Pillow: RGB or L, bilinear resize to the model's H x W, scaled to [0, 1], [C, H, W]).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from app import uploads

NUMBER_TYPES = frozenset({int, float})  # bool is not a number here (type(True) is bool)
FLOAT32_MAX = float(np.finfo(np.float32).max)

Loc = tuple[str | int, ...]


class InputError(ValueError):
    def __init__(self, loc: Loc, msg: str):
        super().__init__(f"{_path(loc)}: {msg}")
        self.loc, self.msg = loc, msg

    def detail(self) -> list[dict[str, Any]]:
        """FastAPI's own 422 shape, so clients handle every validation error alike."""
        return [
            {
                "loc": ["body", *self.loc],
                "msg": f"{_path(self.loc)}: {self.msg}",
                "type": "value_error",
            }
        ]


def _path(loc: Loc) -> str:
    return str(loc[0]) + "".join(f"[{i}]" for i in loc[1:])


def check_rows(count: int, field: str, max_rows: int) -> None:
    if count == 0:
        raise InputError((field,), "give at least one row")
    if count > max_rows:
        raise InputError((field,), f"{count} rows; at most {max_rows} per request")


def parse_inputs(inputs: list[Any], input_shape: list[int], max_rows: int) -> np.ndarray:
    """Nested lists ``[N, *input_shape]`` of numbers → float32 array."""
    check_rows(len(inputs), "inputs", max_rows)
    for i, row in enumerate(inputs):
        _check_nested(row, input_shape, ("inputs", i))
    try:
        x = np.array(inputs, dtype=np.float64)
    except OverflowError:  # an integer literal beyond float64
        raise InputError(("inputs",), "a value is too large for float32") from None
    if x.max() <= FLOAT32_MAX and x.min() >= -FLOAT32_MAX:  # the usual case (NaN fails it)
        return x.astype(np.float32)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN or infinite" if not np.isfinite(x[index]) else "beyond float32's range"
        raise InputError(("inputs", *index), f"{what}; every value must be a finite number")
    return x32


def _check_nested(value: Any, shape: list[int], loc: Loc) -> None:
    """``value`` must be nested lists of exactly ``shape`` with numbers at the leaves."""
    if type(value) is not list:
        raise InputError(loc, f"expected a list of {shape[0]} (shape {shape}), got {_kind(value)}")
    if len(value) != shape[0]:
        raise InputError(loc, f"expected {shape[0]} values (shape {shape}), got {len(value)}")
    if len(shape) == 1:
        # set(map(type, ...)) runs in C: the common all-numbers case costs no Python loop.
        if not set(map(type, value)) <= NUMBER_TYPES:
            j = next(j for j, v in enumerate(value) if type(v) not in NUMBER_TYPES)
            raise InputError((*loc, j), f"not a number: {_kind(value[j])}")
        return
    for j, inner in enumerate(value):
        _check_nested(inner, shape[1:], (*loc, j))


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_images(images: list[str], input_shape: list[int], max_rows: int) -> np.ndarray:
    """Base64 PNG/JPEG strings → float32 ``[N, C, H, W]`` as the training upload made them."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2] or input_shape[0] not in (1, 3):
        raise InputError(
            ("images",), f"this model takes `inputs` of shape {input_shape}, not images"
        )
    check_rows(len(images), "images", max_rows)
    channels, size = input_shape[0], input_shape[1]
    budget = uploads.PixelBudget(len(images), size)
    return np.stack(
        [
            decode_image(_b64(text, ("images", i)), size, channels == 1, ("images", i), budget)
            for i, text in enumerate(images)
        ]
    )


def _b64(text: str, loc: Loc) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(loc, "not valid base64") from None


def decode_image(
    data: bytes, size: int, grayscale: bool, loc: Loc, budget: uploads.PixelBudget | None = None
) -> np.ndarray:
    """One image → float32 [C, size, size], preprocessed exactly as at upload; its pixels
    (from its header) taken from ``budget`` first."""
    try:
        return uploads.decode_image(io.BytesIO(data), size, grayscale, _path(loc), budget)
    except uploads.TooLarge as exc:
        raise InputError(loc, str(exc)) from None
    except uploads.UploadError:
        raise InputError(loc, "not a decodable PNG or JPEG image") from None
