"""Concurrency: one `RoutedModel` shared by many threads.

32 requests with different routes give, under concurrency, exactly the greedy outputs they give
one by one; no adapter state leaks between requests; a request that fails mid-generation (an
exception inside the forward pass, a corrupt adapter, a bad argument, a consumer that gives up on
a stream) never leaves the engine locked or the weights changed.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from lorauter_integrations.engine import RoutedModel
from rel_support import assert_clean, run_threads, snapshot
from lorauter_integrations.errors import AdapterError, InvalidInputError
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route

JOIN_TIMEOUT_S = 120
MAX_NEW = 10
_SUBJECTS = ["the film", "the cat", "the committee", "a man with a guitar", "the capital of France",
             "the weather", "the budget", "Paris"]
_TEMPLATES = ["Is this review positive or negative? {} was a joy.", "Translate to French: {} sits on the mat.",
              "Answer the question: what is {}?", "Summarize: {} met on Tuesday."]
PROMPTS = [t.format(s) for t, s in itertools.islice(itertools.product(_TEMPLATES, _SUBJECTS), 32)]


def _routes() -> list[Route]:
    """32 distinct routes: single adapters, mixtures with varied weights, and the base model."""
    singles = [Route(strategy="t", adapters=[a], weights=[1.0]) for a in "abc"]
    base = [Route(strategy="base", fallback=True)]
    mixes = []
    for pair in (("a", "b"), ("b", "c"), ("a", "c")):
        for w in (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9):
            mixes.append(Route(strategy="t", adapters=list(pair), weights=[w, 1.0 - w]))
    triples = [Route(strategy="t", adapters=["a", "b", "c"], weights=ws)
               for ws in ([1 / 3] * 3, [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2],
                          [0.05, 0.9, 0.05], [0.4, 0.4, 0.2])]
    routes = singles + base + mixes + triples
    assert len(routes) == 32 and len({r.key() for r in routes}) == 32
    return routes


ROUTES = _routes()


@pytest.fixture
def engine(tiny_loaded, tiny_pool_dir):
    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir))


def _alone(engine, indices) -> dict[int, str]:
    """The reference: each request run alone, one after the other."""
    return {i: engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=MAX_NEW)[0].text for i in indices}


def test_32_concurrent_requests_with_different_routes_equal_sequential_runs(engine):
    expected = _alone(engine, range(32))
    sequential = [expected[i] for i in range(32)]
    assert len(set(sequential)) > 8  # routes really change the outputs
    before = snapshot(engine)
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(32)

    def request(i: int):
        def run():
            try:
                start.wait(timeout=JOIN_TIMEOUT_S)
                if i % 3 == 0:  # a third stream, the rest generate: both paths share the model lock
                    results[i] = "".join(c.text for c in engine.stream(PROMPTS[i], ROUTES[i], max_new_tokens=MAX_NEW))
                else:
                    results[i] = engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=MAX_NEW)[0].text
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)
        return run

    run_threads([request(i) for i in range(32)])
    assert not errors
    assert [results[i] for i in range(32)] == sequential

    def batch(idx: list[int]) -> list[str]:  # four different routes per call: the per-row path
        return [g.text for g in engine.generate([PROMPTS[i] for i in idx], [ROUTES[i] for i in idx],
                                                max_new_tokens=MAX_NEW)]

    chunks = [list(range(s, 32, 8)) for s in range(8)]
    with ThreadPoolExecutor(max_workers=8) as ex:
        outs = list(ex.map(batch, chunks, timeout=JOIN_TIMEOUT_S))
    assert {i: t for idx, texts in zip(chunks, outs) for i, t in zip(idx, texts)} == expected
    # all 32 in one call: chunks of max_batch_size, one forward pass per step for mixed routes
    assert [g.text for g in engine.generate(PROMPTS, ROUTES, max_new_tokens=MAX_NEW)] == sequential
    assert_clean(engine, before)


def test_failures_mid_generation_release_the_engine_for_concurrent_requests(engine):
    """A request whose forward pass always fails, and a stream consumer that raises, among healthy
    calls in the same running batch: only those two fail; the others give their usual outputs."""
    healthy_idx = list(range(0, 32, 5))
    expected = _alone(engine, healthy_idx)
    faulty_prompt = PROMPTS[30] + " ~~~~"  # "~" is in no other prompt
    faulty_alone = engine.generate([faulty_prompt], [ROUTES[30]], max_new_tokens=MAX_NEW)[0].text
    before = snapshot(engine)
    marker = engine.tokenizer(faulty_prompt, add_special_tokens=False)["input_ids"]
    others = {t for i in healthy_idx + [3] for t in engine.tokenizer(PROMPTS[i], add_special_tokens=False)["input_ids"]}
    poison = next(t for t in marker if t not in others)  # a token only the faulty prompt has

    def fail_on_poison(module, args):
        # Fails every pass whose input holds the faulty prompt: its prefill, alone or batched.
        if (args[0] == poison).any():
            raise RuntimeError("injected failure")

    failures: list[BaseException] = []
    results: dict[int, str] = {}

    def faulty():
        try:
            engine.generate([faulty_prompt], [ROUTES[30]], max_new_tokens=MAX_NEW)
        except RuntimeError as exc:
            failures.append(exc)

    def give_up():
        try:
            for n, _ in enumerate(engine.stream(PROMPTS[3], ROUTES[3], max_new_tokens=MAX_NEW)):
                if n == 1:
                    raise ValueError("consumer gave up")
        except ValueError as exc:
            failures.append(exc)

    def healthy(i):
        def run():
            results[i] = engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=MAX_NEW)[0].text
        return run

    hook = engine.model.get_input_embeddings().register_forward_pre_hook(fail_on_poison)
    try:
        run_threads([faulty, give_up, *[healthy(i) for i in healthy_idx]])
    finally:
        hook.remove()
    assert sorted(str(f) for f in failures) == ["consumer gave up", "injected failure"]
    assert results == {i: expected[i] for i in healthy_idx}
    assert_clean(engine, before)
    # the request that failed works once the fault is gone, with its usual output
    assert engine.generate([faulty_prompt], [ROUTES[30]], max_new_tokens=MAX_NEW)[0].text == faulty_alone


def test_a_passing_fault_in_a_shared_decoding_step_fails_no_request(engine):
    """One decoding step of a running batch fails once (its KV cache half written): every row is
    replayed alone from its prompt and tokens so far, and all requests complete."""
    idx = list(range(0, 32, 4))
    expected = _alone(engine, idx)
    before = snapshot(engine)
    state = {"steps": 0, "fired": False}

    def fail_once(module, args):
        x = args[0]
        if x.shape[0] > 1 and x.shape[1] == 1:  # a decoding step of several rows
            state["steps"] += 1
            if state["steps"] == 4 and not state["fired"]:
                state["fired"] = True
                raise RuntimeError("passing fault")

    results: dict[int, str] = {}
    hook = engine.model.get_input_embeddings().register_forward_pre_hook(fail_once)
    try:
        run_threads([lambda i=i: results.__setitem__(
            i, engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=MAX_NEW)[0].text) for i in idx])
    finally:
        hook.remove()
    assert state["fired"]
    assert results == expected
    assert_clean(engine, before)


def test_a_stream_advanced_from_different_threads_completes_and_releases_the_engine(engine):
    # Async frameworks may resume a sync iterator on whichever worker thread is free.
    expected = _alone(engine, [7, 8])
    before = snapshot(engine)
    stream = engine.stream(PROMPTS[7], ROUTES[7], max_new_tokens=MAX_NEW)
    pieces: list[str] = []
    while True:
        box: list = []
        step = threading.Thread(target=lambda: box.append(next(stream, None)), daemon=True)  # a new thread per step
        step.start()
        step.join(timeout=JOIN_TIMEOUT_S)
        assert box, "a stream step failed or hung"
        if box[0] is None:
            break
        pieces.append(box[0].text)
    assert "".join(pieces) == expected[7]
    assert_clean(engine, before)
    done: list[str] = []
    other = threading.Thread(target=lambda: done.append(
        engine.generate([PROMPTS[8]], [ROUTES[8]], max_new_tokens=MAX_NEW)[0].text), daemon=True)
    other.start()
    other.join(timeout=JOIN_TIMEOUT_S)
    assert done == [expected[8]]


def test_requests_that_fail_before_decoding_do_not_disturb_concurrent_ones(engine, tiny_pool_dir):
    only_a_or_c = [i for i, r in enumerate(ROUTES) if "b" not in r.adapters][:8]
    expected = _alone(engine, only_a_or_c)
    before = snapshot(engine)
    # Adapters load lazily: "b" was registered and checked, but its file is damaged before first use.
    path = tiny_pool_dir / "b" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:64])
    b_route = next(r for r in ROUTES if "b" in r.adapters)
    outcomes: dict[str, BaseException] = {}
    results: dict[int, str] = {}

    def expect(name, fn, error):
        def run():
            try:
                fn()
            except error as exc:
                outcomes[name] = exc
        return run

    def healthy(i):
        def run():
            results[i] = engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=MAX_NEW)[0].text
        return run

    run_threads([
        expect("corrupt", lambda: engine.generate([PROMPTS[1]], [b_route], max_new_tokens=MAX_NEW), AdapterError),
        expect("stop", lambda: engine.generate([PROMPTS[2]], [ROUTES[2]], stop=[""]), InvalidInputError),
        expect("empty", lambda: list(engine.stream("   ", ROUTES[0])), InvalidInputError),
        *[healthy(i) for i in only_a_or_c],
    ])
    assert set(outcomes) == {"corrupt", "stop", "empty"}
    assert "corrupt or truncated safetensors" in str(outcomes["corrupt"])
    assert results == expected
    assert_clean(engine, before)
