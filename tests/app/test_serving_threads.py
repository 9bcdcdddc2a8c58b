"""onnxruntime threads per call chosen from the cores and the API processes."""

from __future__ import annotations

import pytest

from app.serving.runtime import ServingRuntime
from app.settings import default_ort_intra_op_threads
from tests.support.model_serving import make_settings


@pytest.mark.parametrize(
    ("cores", "processes", "threads"),
    [(1, 1, 1), (2, 2, 1), (2, 1, 1), (4, 1, 3), (8, 4, 1), (16, 2, 7), (64, 32, 1), (4, 8, 1)],
)
def test_each_process_gets_its_share_of_the_cores_less_its_event_loop(cores, processes, threads):
    assert default_ort_intra_op_threads(cores, processes) == threads


def test_the_setting_wins_and_zero_means_this_machines_default(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert make_settings(tmp_path, ort_intra_op_threads=3).resolved_ort_intra_op_threads == 3
    assert make_settings(tmp_path, api_workers=4).resolved_ort_intra_op_threads == 3  # 16 // 4 - 1
    assert (
        make_settings(tmp_path).resolved_ort_intra_op_threads == 16 // 8 - 1
    )  # 8 processes on 16 cores
    runtime = ServingRuntime(make_settings(tmp_path, api_workers=2))
    try:
        assert runtime.sessions.intra_op_threads == 7
    finally:
        runtime.close()
