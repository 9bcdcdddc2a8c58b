"""The adaptive batching rule of app/serving/batching.py on a made-up clock."""

from __future__ import annotations

import pytest

from app.serving.batching import GAP_WEIGHT, MAX_GAP_DELAYS, PAUSE_GAPS, Arrivals, closes_at

D = 0.005  # max_queue_delay, s


def arrivals_at(times: list[float]) -> Arrivals:
    """An estimate that saw these arrivals, each joining a waiting batch."""
    arrivals = Arrivals(D)
    for t in times:
        arrivals.observe(t)
    return arrivals


def test_a_first_request_closes_at_once():
    arrivals = arrivals_at([10.0])
    assert arrivals.gap == MAX_GAP_DELAYS * D  # nothing seen before: nobody is expected
    assert closes_at(arrivals, oldest=10.0, now=10.0) is None


def test_a_lone_closed_loop_client_never_waits_for_itself():
    """One client that sends again 0.6 ms after each answer: every request finds the
    lane empty, so its gaps (the batcher's own doing) never count and it never waits."""
    arrivals = Arrivals(D)
    t = 0.0
    for _ in range(200):
        arrivals.observe(t, joins_waiting=False)
        assert closes_at(arrivals, oldest=t, now=t) is None
        t += 6e-4


def test_a_lone_request_waits_at_most_two_gaps_seen_inside_batches():
    arrivals = arrivals_at([i * 1e-4 for i in range(200)])  # 10 000 requests/s
    assert arrivals.gap == pytest.approx(1e-4)
    arrivals.observe(5.0, joins_waiting=False)  # then one alone, after a pause
    assert closes_at(arrivals, oldest=5.0, now=5.0) == pytest.approx(5.0 + PAUSE_GAPS * 1e-4)


def test_a_steady_stream_fills_up_to_the_delay():
    """Every 0.5 ms: the next one is always due, so the batch waits until D."""
    gap = 5e-4
    arrivals = arrivals_at([i * gap for i in range(100)])
    assert arrivals.gap == pytest.approx(gap, rel=1e-3)
    oldest = 100 * gap
    t = oldest
    while (wake := closes_at(arrivals, oldest, t)) is not None:
        t += gap  # the next request arrives before the timer fires
        assert wake >= t - gap
        arrivals.observe(t)
    assert t == pytest.approx(oldest + D - gap, abs=gap)  # 10 requests, about D after the first


def test_a_burst_closes_two_gaps_after_its_last_request():
    """Bursts of 16 every 10 ms (closed-loop clients): the gaps inside a burst are
    small, and a burst closes 2 of them after its last request, long before D."""
    arrivals = Arrivals(D)
    for c in range(30):
        for i in range(16):
            last = c * 0.01 + i * 2e-5
            arrivals.observe(last, joins_waiting=i > 0)  # the first finds the lane empty
    oldest = 29 * 0.01
    wake = closes_at(arrivals, oldest=oldest, now=last)
    assert arrivals.gap == pytest.approx(2e-5, rel=0.01)
    assert wake == pytest.approx(last + PAUSE_GAPS * arrivals.gap)
    assert closes_at(arrivals, oldest=oldest, now=wake) is None  # no arrival meanwhile


def test_the_delay_caps_the_wait():
    arrivals = arrivals_at([i * 1e-4 for i in range(100)])
    oldest = 0.0099 - D / 2
    assert closes_at(arrivals, oldest, now=oldest + D) is None
    assert closes_at(arrivals, oldest, now=oldest + 2 * D) is None
    wake = closes_at(arrivals, oldest=0.0099, now=0.0099)
    assert wake is not None and wake <= 0.0099 + D


def test_a_gap_never_counts_for_more_than_twice_the_delay():
    arrivals = arrivals_at([i * 1e-4 for i in range(100)])
    before = arrivals.gap
    arrivals.observe(1e6)  # an idle spell of days moves the estimate by alpha (2 D - gap)
    assert arrivals.gap == pytest.approx(before + GAP_WEIGHT * (MAX_GAP_DELAYS * D - before))
    for hour in range(1, 100):
        arrivals.observe(1e6 + 3600.0 * hour)
    assert arrivals.gap == pytest.approx(MAX_GAP_DELAYS * D)
