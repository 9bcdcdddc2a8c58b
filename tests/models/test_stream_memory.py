"""Peak RSS of one streamed epoch does not grow with the image folder: 150 vs 1500
64x64 images (bench/stream_memory.py, each run a fresh process, loader in-process).

Bound: the larger folder's peak RSS stays within the smaller one's + 50 MB. Holding the
larger folder as float32 arrays would cost 1500 x 3 x 64 x 64 x 4 B = 74 MB, twice over
once the validation split is carved out; measured streamed growth is ~1 MB."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BOUND_MB = 50

spec = importlib.util.spec_from_file_location(
    "stream_memory", Path(__file__).resolve().parents[2] / "bench" / "stream_memory.py"
)
stream_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stream_memory)


def test_peak_rss_of_an_epoch_does_not_grow_with_the_folder():
    small, large = stream_memory.measure(150, workers=0).values()
    assert large["images"] == 10 * small["images"]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    assert growth < BOUND_MB, (small, large)
