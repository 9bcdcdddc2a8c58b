"""app/serving/batching.py and sessions.py in-process, on a real exported model."""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.serving.batching import DynamicBatcher
from app.serving.onnx_model import OnnxModel
from app.serving.runtime import infer
from app.serving.sessions import SessionCache
from tests.support.model_serving import D, exported

S = 200


@pytest.fixture(scope="module")
def model():
    return OnnxModel(exported("het"))


def rows(n, seed):
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def test_rows_are_independent_given_the_seed(model):
    """out_b = g(x_b, eps(seed, S)): a row's outputs do not depend on its batch mates."""
    x = rows(9, 1)
    together = model.run(x, num_samples=S, seed=11)
    for b in (0, 4, 8):
        alone = model.run(x[b : b + 1], num_samples=S, seed=11)
        for name, value in alone.items():
            np.testing.assert_allclose(
                together[name][b], value[0], rtol=1e-6, atol=1e-7, err_msg=name
            )
    # ...and the seed matters: another seed gives other draws.
    other = model.run(x, num_samples=S, seed=12)
    assert np.abs(other["probs"] - together["probs"]).max() > 1e-4


def batch_count(model_id):
    return REGISTRY.get_sample_value("hetserve_batch_rows_count", {"model": model_id}) or 0.0


async def run_concurrently(batcher, model, model_id, requests):
    """Each (rows, seed) as the serving runtime batches it: keyed by the seed."""
    return await asyncio.gather(
        *(
            batcher.run(
                (model_id, seed), model_id, partial(infer, model, model_id, S, seed, None), x
            )
            for x, seed in requests
        )
    )


def test_batcher_merges_and_splits_back_exactly(model):
    """Concurrent requests with one seed merge into few calls; each gets exactly what a
    lone run of its own rows gives. Requests with other seeds never share a call."""
    model_id = "batching-test"
    batcher = DynamicBatcher(ThreadPoolExecutor(2), max_batch_size=16, max_queue_delay_ms=50)
    sizes = [1, 3, 2, 5, 1, 4, 2, 1, 3, 2]  # 24 rows: at least 2 batches of <= 16
    requests = [(rows(n, 100 + i), 5) for i, n in enumerate(sizes)]
    requests += [(rows(2, 200), 6), (rows(1, 201), None)]
    before = batch_count(model_id)
    results = asyncio.run(run_concurrently(batcher, model, model_id, requests))
    calls = batch_count(model_id) - before
    # seed 5: 24 rows in batches of <= 16 -> 2 calls; seed 6 and unseeded: 1 each.
    assert calls == 4, calls
    for (x, seed), got in zip(requests[:-1], results[:-1], strict=True):
        want = model.run(x, num_samples=S, seed=seed)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert results[-1]["probs"].shape == (1, 5)
    assert not batcher._lanes  # every lane drained and removed


def test_batch_never_exceeds_max_rows_and_big_requests_run_alone(model):
    model_id = "batching-limit"
    batcher = DynamicBatcher(ThreadPoolExecutor(1), max_batch_size=4, max_queue_delay_ms=20)
    requests = [(rows(3, 1), 1), (rows(3, 2), 1), (rows(9, 3), 1), (rows(1, 4), 1)]
    before = REGISTRY.get_sample_value("hetserve_batch_rows_sum", {"model": model_id}) or 0.0
    results = asyncio.run(run_concurrently(batcher, model, model_id, requests))
    assert [len(r["probs"]) for r in results] == [3, 3, 9, 1]
    # 3 | 3 | 9 (alone, never split) | 1 -> 4 calls, 16 rows.
    assert batch_count(model_id) == 4
    assert REGISTRY.get_sample_value("hetserve_batch_rows_sum", {"model": model_id}) - before == 16
    bucket4 = REGISTRY.get_sample_value(
        "hetserve_batch_rows_bucket", {"model": model_id, "le": "4.0"}
    )
    assert bucket4 == 3  # every call but the oversized one held <= 4 rows


def test_a_lone_request_is_not_held_and_one_that_waited_for_a_run_goes_next():
    """A lone request (no company due) runs at once, not after max_queue_delay; one that
    arrives while a batch runs has waited already and goes as soon as that batch is back."""
    batcher = DynamicBatcher(ThreadPoolExecutor(1), max_batch_size=64, max_queue_delay_ms=1000)

    def slow(x):  # any fn: the batcher knows nothing of models
        time.sleep(0.2)
        return {"y": x * 2}

    async def scenario():
        start = time.perf_counter()

        async def one(x, after):
            await asyncio.sleep(after)
            out = await batcher.run("k", "delay-test", slow, x)
            return out["y"], time.perf_counter() - start

        return await asyncio.gather(one(np.ones((1, 2)), 0), one(np.full((2, 2), 3.0), 0.1))

    (first, first_done), (second, second_done) = asyncio.run(scenario())
    assert first.tolist() == [[2, 2]] and second.tolist() == [[6, 6], [6, 6]]
    assert first_done < 0.7, first_done  # ran at once (0.2 s), not after the delay (1.2 s)
    # arrived at 0.1 during the first run: runs at ~0.2, done ~0.4, not after 1.1 s
    assert second_done < 0.9, second_done


def test_repeated_bursts_close_soon_after_their_last_request():
    """Closed-loop clients send in bursts: once the batcher has seen a few, a burst runs
    about two mean gaps after its last request, not after max_queue_delay."""
    delay_s = 0.6
    batcher = DynamicBatcher(
        ThreadPoolExecutor(1), max_batch_size=64, max_queue_delay_ms=delay_s * 1000
    )
    sizes = []

    def record(x):
        sizes.append(len(x))
        return {"y": x}

    async def burst():
        start = time.perf_counter()
        await asyncio.gather(
            *(batcher.run("k", "burst-test", record, np.ones((1, 2))) for _ in range(8))
        )
        return time.perf_counter() - start

    async def bursts():
        return [await burst() for _ in range(6)]

    took = asyncio.run(bursts())
    assert sizes == [8] * 6  # every burst is one batch
    assert max(took[-2:]) < delay_s / 3, took  # learnt: the mean gap is a fraction of it


def test_unseeded_calls_draw_fresh_noise(model):
    x = rows(1, 7)
    a, b = model.run(x, num_samples=S), model.run(x, num_samples=S)
    assert not np.array_equal(a["probs"], b["probs"])


def test_session_cache_is_lru_and_warm(tmp_path):
    path = exported("het")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()  # checked against the file on load
    cache = SessionCache(capacity=2)
    first = cache.get(("a", sha), path)
    assert cache.get(("a", sha), path) is first  # a hit is the same session
    cache.get(("b", sha), path)
    cache.get(("a", sha), path)  # a is now the most recent
    cache.get(("c", sha), path)  # evicts b, the least recently used
    assert cache.peek(("b", sha)) is None
    assert cache.peek(("a", sha)) is first
    assert cache.peek(("a", "other-sha")) is None  # the file hash is part of the key
    assert len(cache) == 2
    assert REGISTRY.get_sample_value("hetserve_sessions_loaded") == 2
    cache.forget("a")
    assert cache.peek(("a", sha)) is None and len(cache) == 1


def test_model_directory_caches_for_ttl_and_invalidates(tmp_path):
    """A lookup is reused for ttl seconds; a write elsewhere shows after at most ttl."""
    from app.db import session_scope
    from app.serving.directory import ModelDirectory
    from app.store import ModelStore
    from tests.support.model_serving import make_settings, register

    settings = make_settings(tmp_path, model_lookup_ttl_s=0.3)
    first, second = register(settings, exported("het")), register(settings, exported("het"))
    with session_scope(settings) as session:
        ModelStore(session).set_alias("prod", first)
    directory = ModelDirectory(settings)
    assert directory.cached("prod") is None
    assert directory.lookup("prod").model_id == first
    assert directory.lookup("nope") is None
    with session_scope(settings) as session:  # another process moves the alias
        ModelStore(session).set_alias("prod", second)
    assert directory.cached("prod").model_id == first  # stale, but only for ttl
    time.sleep(0.35)
    assert directory.cached("prod") is None
    assert directory.lookup("prod").model_id == second
    with session_scope(settings) as session:  # and moves it back: a second expiry
        ModelStore(session).set_alias("prod", first)
    time.sleep(0.35)
    assert directory.cached("prod") is None  # refreshed again, not served stale forever
    assert directory.lookup("prod").model_id == first
    directory.invalidate()
    assert directory.cached("prod") is None


def test_runtime_built_before_a_fork_serves_in_the_child(tmp_path):
    """The lifespan builds the runtime before any request; a process forked after it
    has run inferences (its threads exist only in the parent) still predicts, seed for
    seed like the parent, instead of hanging on the parent's executor."""
    import os
    import signal

    from app.serving.runtime import ServingRuntime
    from tests.support.model_serving import make_settings

    runtime = ServingRuntime(make_settings(tmp_path, max_queue_delay_ms=1))
    path, x = exported("het"), rows(3, 5)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()

    async def predict():
        model = await runtime.model(("m", sha), path)
        return await runtime.predict(model, "m", x, S, 4)

    want = asyncio.run(predict())["probs"]
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if it predicted the parent's numbers
        code = 1
        try:
            code = 0 if np.array_equal(asyncio.run(predict())["probs"], want) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the runtime it inherited")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    runtime.close()
