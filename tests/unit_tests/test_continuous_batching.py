"""The decode loop serves many callers at once: rows join and leave the running batch at step
boundaries, each with its own route; cancelled rows leave without disturbing the others; the
queue is bounded and first come, first admitted."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.engine import RoutedModel
from lorauter_integrations.errors import EngineBusyError
from lorauter_integrations.route import Route

MAX_NEW = 12
PROMPTS = [f"{t} {s}" for t in ("Is this review positive or negative?", "Translate to French:",
                                "Answer the question:", "Summarize:")
           for s in ("the film was a joy.", "the cat sits on the mat.", "what is the capital of France?",
                     "the committee met on Tuesday.", "a man with a guitar.", "the weather is nice.",
                     "the budget.", "Paris in spring.")]
ROUTES = [
    Route(strategy="t", adapters=["a"], weights=[1.0]), Route(strategy="t", adapters=["b"], weights=[1.0]),
    Route(strategy="t", adapters=["c"], weights=[1.0]), Route(strategy="base", fallback=True),
    Route(strategy="t", adapters=["a", "b"], weights=[0.3, 0.7]),
    Route(strategy="t", adapters=["b", "c"], weights=[0.5, 0.5]),
    Route(strategy="t", adapters=["a", "b", "c"], weights=[0.2, 0.3, 0.5]),
    Route(strategy="t", adapters=["a", "b", "c"], weights=[0.6, 0.2, 0.2]),
]


@pytest.fixture
def engine(tiny_loaded, tiny_pool_dir):
    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), max_batch_size=8)


def _route(i: int) -> Route:
    return ROUTES[i % len(ROUTES)]


def _alone(engine, indices) -> dict[int, str]:
    return {i: engine.generate([PROMPTS[i]], [_route(i)], max_new_tokens=MAX_NEW)[0].text for i in indices}


def test_requests_from_threads_and_asyncio_tasks_at_random_times_equal_each_run_alone(engine):
    expected = _alone(engine, range(32))
    assert len(set(expected.values())) > 8  # the routes really change the outputs
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.3) for _ in range(32)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    engine.loop.peak_rows = 0

    def thread_request(i: int) -> None:
        try:
            time.sleep(delays[i])
            if i % 4 == 0:
                results[i] = "".join(c.text for c in engine.stream(PROMPTS[i], _route(i), max_new_tokens=MAX_NEW))
            else:
                results[i] = engine.generate([PROMPTS[i]], [_route(i)], max_new_tokens=MAX_NEW)[0].text
        except BaseException as e:  # surfaced below
            errors.append(e)

    async def task_request(i: int) -> None:
        await asyncio.sleep(delays[i])
        if i % 4 == 1:
            results[i] = "".join([c.text async for c in engine.astream(PROMPTS[i], _route(i), max_new_tokens=MAX_NEW)])
        else:
            results[i] = (await engine.agenerate([PROMPTS[i]], [_route(i)], max_new_tokens=MAX_NEW))[0].text

    async def tasks() -> None:
        await asyncio.gather(*(task_request(i) for i in range(1, 32, 2)))

    threads = [threading.Thread(target=thread_request, args=(i,), daemon=True) for i in range(0, 32, 2)]
    threads.append(threading.Thread(target=lambda: asyncio.run(tasks()), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads) and not errors
    assert results == expected
    assert engine.loop.peak_rows > 1  # requests really shared decoding steps
    assert engine.loop.wait_idle(30) and not engine.composer.active


def test_cancelled_requests_leave_at_the_next_step_and_the_others_are_unchanged(engine):
    keep = [0, 2, 3, 5, 6]
    expected = _alone(engine, keep)
    results: dict[int, str] = {}
    stopped: list[int] = []

    def consumer_that_stops(i: int) -> None:  # a caller that stops iterating after two chunks
        stream = engine.stream(PROMPTS[i], _route(i), max_new_tokens=60)
        for n, _ in enumerate(stream):
            if n == 1:
                stream.close()
                stopped.append(i)
                return

    async def cancelled_task(i: int) -> None:  # an asyncio task cancelled mid-stream
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.astream(PROMPTS[i], _route(i), max_new_tokens=60):
                first.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(first.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped.append(i)

    def healthy(i: int) -> None:
        results[i] = engine.generate([PROMPTS[i]], [_route(i)], max_new_tokens=MAX_NEW)[0].text

    threads = [threading.Thread(target=healthy, args=(i,), daemon=True) for i in keep]
    threads += [threading.Thread(target=consumer_that_stops, args=(1,), daemon=True),
                threading.Thread(target=lambda: asyncio.run(cancelled_task(4)), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert sorted(stopped) == [1, 4]
    assert results == expected
    assert engine.loop.wait_idle(30) and not engine.composer.active  # the cancelled rows were freed


def test_a_full_queue_makes_a_request_wait_then_fail_with_engine_busy(tiny_loaded, tiny_pool_dir):
    engine = RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), max_batch_size=1, max_queue=1,
                         queue_timeout_s=0.5)
    with engine.activate(None):  # the loop is paused: nothing leaves the queue
        first = threading.Thread(target=engine.generate, args=([PROMPTS[0]], [ROUTES[0]]),
                                 kwargs={"max_new_tokens": 2}, daemon=True)
        first.start()
        deadline = time.monotonic() + 30
        while engine.loop.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(EngineBusyError, match="busy"):
            engine.generate([PROMPTS[1]], [ROUTES[1]], max_new_tokens=2)
        assert 0.4 < time.monotonic() - started < 10  # it waited for a place, boundedly
    first.join(timeout=60)
    assert not first.is_alive()
    assert engine.generate([PROMPTS[1]], [ROUTES[1]], max_new_tokens=2)  # served once there is room


def test_waiting_requests_are_admitted_first_come_first_served(tiny_loaded, tiny_pool_dir):
    engine = RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), max_batch_size=1)
    order: list[int] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        stream = engine.stream(PROMPTS[i], ROUTES[0], max_new_tokens=3)
        next(stream)  # the first chunk comes once the row was admitted
        with lock:
            order.append(i)
        list(stream)

    with engine.activate(None):
        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=request, args=(i,), daemon=True))
            threads[-1].start()
            deadline = time.monotonic() + 30
            while engine.loop.waiting < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
    for t in threads:
        t.join(timeout=120)
    assert order == [0, 1, 2, 3, 4]


def test_removing_an_adapter_never_changes_a_running_row(engine):
    route = Route(strategy="t", adapters=["a", "c"], weights=[0.5, 0.5])
    expected = engine.generate([PROMPTS[3]], [route], max_new_tokens=MAX_NEW)[0].text
    stream = engine.stream(PROMPTS[3], route, max_new_tokens=MAX_NEW)
    text = next(stream).text
    engine.pool.remove("c")  # the running row keeps the composition it was admitted with
    text += "".join(c.text for c in stream)
    assert text == expected
    from lorauter_integrations.errors import UnknownAdapterError

    with pytest.raises(UnknownAdapterError):  # new requests cannot use it any more
        engine.generate([PROMPTS[3]], [route], max_new_tokens=2)
