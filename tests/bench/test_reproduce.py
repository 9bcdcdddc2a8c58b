"""bench/reproduce.py and bench/run_record.py: a new run's ratio counts as reproduced only
inside the min-max of the recorded runs' values, every run of a multi-run record counts,
and serving's hetserve / best-anchor ratio is taken against the anchor with the most
requests/s, each pass against that pass's best."""

from __future__ import annotations

import argparse
import math

import pytest

from bench import reproduce, run_record, serve_load

MACHINE = {
    "date": "2026-12-07 16:00 UTC",
    "host": "vm",
    "boot_id": "b",
    "cpu": "cpu",
    "speed": {"gemm_gflops": 100.0, "copy_gb_s": 30.0, "python_msteps": 50.0},
}


def record(directory, bench, ratios, per_run=None):
    figures = {"ratios_per_run": per_run} if per_run else {}
    run_record.write(directory / f"{bench}.json", bench, MACHINE, ratios, **figures)


def test_a_ratio_reproduces_only_inside_the_recorded_min_max(tmp_path, capsys):
    first, second, new = tmp_path / "first", tmp_path / "second", tmp_path / "new"
    record(first, "export_speed", {"K=10 B=1: graph / torch": 1.0})
    record(second, "export_speed", {"K=10 B=1: graph / torch": 2.0})
    record(new, "export_speed", {"K=10 B=1: graph / torch": 1.5, "K=99: new cell": 9.0})
    assert reproduce.check(new, [first, second]) == 0
    out = capsys.readouterr().out
    assert "export_speed: 1 of 1 ratios inside" in out
    assert "K=99: new cell: 9.000 (no recorded run)" in out

    record(new, "export_speed", {"K=10 B=1: graph / torch": 2.01})
    assert reproduce.check(new, [first, second]) == 1
    assert "2.010 outside 1.000 / 1.500 / 2.000 (2 runs; 90 % interval" in capsys.readouterr().out
    # one recorded run is a spread of one value: anything else is outside it
    assert reproduce.check(new, [second]) == 1


def test_every_run_of_a_multi_run_record_is_pooled(tmp_path):
    recorded, new = tmp_path / "recorded", tmp_path / "new"
    runs = [{"128/512/100/10 shared: edward2 / hetserve predict": v} for v in (3.0, 5.0, 4.0)]
    record(recorded, "head_speed", runs[-1], per_run=runs)
    assert reproduce.pooled([recorded]) == {
        "head_speed": {"128/512/100/10 shared: edward2 / hetserve predict": [3.0, 5.0, 4.0]}
    }
    record(new, "head_speed", {"128/512/100/10 shared: edward2 / hetserve predict": 3.1})
    assert reproduce.check(new, [recorded]) == 0  # inside 3..5, though only 4.0 was last


def test_the_interval_for_a_new_run_is_students_t_in_log():
    assert reproduce.prediction_interval([2.0]) is None  # one run says nothing of the next
    low, high = reproduce.prediction_interval([2.0, 8.0])
    # log mean ln 4, sd ln 4 / sqrt 2, t(1 df) = 6.314, sqrt(1 + 1/2)
    half = 6.314 * math.log(4) / math.sqrt(2) * math.sqrt(1.5)
    assert (low, high) == pytest.approx((4 * math.exp(-half), 4 * math.exp(half)))
    assert low * high == pytest.approx(16)  # symmetric in log, around the geometric mean
    # a third run at the centre narrows it (more degrees of freedom, smaller sd)
    three = reproduce.prediction_interval([2.0, 8.0, 4.0])
    assert low < three[0] < 4 < three[1] < high
    assert reproduce.t95(30) == pytest.approx(1.697, abs=0.01)


def test_check_counts_runs_inside_the_interval(tmp_path, capsys):
    recorded, new = tmp_path / "recorded", tmp_path / "new"
    record(recorded, "data_loading", {"a": 2.0}, per_run=[{"a": 2.0}, {"a": 8.0}])
    record(new, "data_loading", {"a": 30.0})
    assert reproduce.check(new, [recorded]) == 1
    out = capsys.readouterr().out
    assert (
        "0 of 1 ratios inside the recorded min-max (expected if runs were exchangeable: 0.3)" in out
    )
    assert "1 of 1 inside the 90 % interval for a new run" in out  # 30 < 4 * e^6.0


def test_a_file_that_is_not_a_run_record_is_refused(tmp_path):
    (tmp_path / "serve_load.json").write_text('{"K=10 rows=1": {}}')  # an older bare dump
    with pytest.raises(ValueError, match="not a run record"):
        reproduce.records(tmp_path)


def rounds(rps):
    return [{"rps": r, "p99": 1000 / r, "other_cores": 0.0} for r in rps]


def test_serving_is_against_the_best_anchor_and_each_pass_against_its_own_best():
    servers = {
        "hetserve": rounds([100, 200, 150]),
        "triton": rounds([50, 100, 300]),  # median 100: the best anchor
        "fastapi": rounds([80, 90, 95]),
        "hetserve, tuned": rounds([1000, 1000, 1000]),  # not an anchor
    }
    versus = serve_load.versus_best_anchor(servers, ["triton", "fastapi"], 0.2)
    assert versus is not None
    assert versus.best == "triton"
    assert versus.ratio == pytest.approx(150 / 100)
    assert versus.p99 == pytest.approx(1000 / 150)
    # pass 1 against fastapi (80 > 50), passes 2 and 3 against triton
    assert (versus.per_pass.low, versus.per_pass.median, versus.per_pass.high) == pytest.approx(
        (0.5, 100 / 80, 2.0)
    )
    assert serve_load.versus_best_anchor({"triton": servers["triton"]}, ["triton"], 0.2) is None


def test_a_busy_pass_is_left_out_of_the_medians():
    servers = {"hetserve": rounds([100, 200, 150]), "triton": rounds([100, 100, 100])}
    servers["hetserve"][1]["other_cores"] = 0.9  # the 200 was measured beside other work
    versus = serve_load.versus_best_anchor(servers, ["triton"], 0.2)
    assert versus is not None and versus.ratio == pytest.approx(125 / 100)


def test_serving_record_round_trips_through_from_json(tmp_path):
    results = {
        (10, 1): {"hetserve": rounds([300]), "triton": rounds([200])},
        (100, 16): {"hetserve": rounds([40]), "fastapi": rounds([50])},
    }
    args = argparse.Namespace(
        json=tmp_path / "serve_load.json",
        anchors=["triton", "fastapi"],
        max_other_cores=0.2,
        machine=MACHINE,
    )
    serve_load.save(results, args)
    saved = run_record.read(args.json)
    assert saved["ratios"] == {
        "K=10 rows=1: hetserve / best anchor req/s": pytest.approx(1.5),
        "K=100 rows=16: hetserve / best anchor req/s": pytest.approx(0.8),
    }
    assert serve_load.load(args.json) == results


def test_the_recorded_runs_readme_is_what_spread_prints(capsys):
    """docs/bench-runs/README.md is generated from the records beside it: regenerate it
    (the command in its first lines) after adding a run."""
    runs = reproduce.ROOT / "docs" / "bench-runs"
    reproduce.spread(sorted(d for d in runs.iterdir() if d.is_dir()))
    assert (runs / "README.md").read_text() == capsys.readouterr().out


def test_the_cpu_description_tells_two_generations_under_one_model_name_apart():
    def cpuinfo(model, flags):
        core = f"model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: {model}\nflags\t\t: {flags}\n"
        return core + "\n" + core  # a second core repeats the fields: the first one counts

    zen3 = run_record.describe_cpu(cpuinfo(1, "fpu sse avx avx2 fma"))
    zen4 = run_record.describe_cpu(cpuinfo(17, "avx avx2 avx512f avx512_vnni avx512_bf16"))
    assert zen3.startswith("AMD EPYC (family 25 model 1; avx2), ")
    assert zen4.startswith("AMD EPYC (family 25 model 17; avx2 avx512f avx512_vnni avx512_bf16)")
    assert run_record.describe_cpu("").endswith("cores visible")  # no /proc/cpuinfo
