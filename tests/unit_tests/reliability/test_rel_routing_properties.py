"""Hypothesis properties of routing: valid weights, determinism, insertion-order invariance, OOD.

Stores are built once per module and reused by every example (indexing is the costly part);
queries mix real Flan inputs, arbitrary unicode and fragments of both.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorauter_integrations.data import bundled_data_dir, read_jsonl
from lorauter_integrations.routing import build_router, merge_by_adapter, override_route, softmax
from lorauter_integrations.errors import InvalidInputError
from lorauter_integrations.store import TaskStore

LEARNED = ["lorauter", "lorauter-paper", "retriever", "examples"]
PROPERTY_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def stores(tmp_path_factory, slice_tasks):
    """The same tasks indexed in three orders: all at once, reversed, and one by one shuffled."""
    a = TaskStore(tmp_path_factory.mktemp("order-a"))
    a.index(slice_tasks, progress=False)
    b = TaskStore(tmp_path_factory.mktemp("order-b"))
    b.index(list(reversed(slice_tasks)), progress=False)
    c = TaskStore(tmp_path_factory.mktemp("order-c"))
    shuffled = list(slice_tasks)
    random.Random(7).shuffle(shuffled)
    for t in shuffled:  # one index call per task: every call refits the representations
        c.index([t], progress=False)
    return a, b, c


@pytest.fixture(scope="module")
def routers(stores):
    return {s: build_router(s, stores[0]) for s in LEARNED + ["uniform"]}


_flan_inputs = [q.inputs for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl")[::37]]
queries = st.one_of(
    st.sampled_from(_flan_inputs),
    st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
    st.builds(lambda q, i: q[: max(1, i)], st.sampled_from(_flan_inputs), st.integers(1, 80)).filter(
        lambda s: s.strip()),
)


@PROPERTY_SETTINGS
@given(query=queries, strategy=st.sampled_from(LEARNED + ["uniform"]))
def test_weights_are_non_negative_and_sum_to_one(routers, query, strategy):
    r = routers[strategy].route(query)
    assert len(r.adapters) == len(r.weights) == len(set(r.adapters))
    assert all(w >= 0 and math.isfinite(w) for w in r.weights)
    assert r.fallback or math.isclose(sum(r.weights), 1.0, abs_tol=1e-9)


@PROPERTY_SETTINGS
@given(query=queries, strategy=st.sampled_from(LEARNED))
def test_routing_is_deterministic_for_equal_inputs(stores, routers, query, strategy):
    first = routers[strategy].route(query)
    again = routers[strategy].route(query)
    rebuilt = build_router(strategy, stores[0]).route(query)  # a new router over the same store
    for other in (again, rebuilt):
        assert (other.tasks, other.adapters, other.weights) == (first.tasks, first.adapters, first.weights)


@PROPERTY_SETTINGS
@given(query=queries, strategy=st.sampled_from(LEARNED))
def test_routes_do_not_depend_on_task_insertion_order(stores, query, strategy):
    routes = [build_router(strategy, s).route(query) for s in stores]
    ref = routes[0]
    for other in routes[1:]:
        assert other.tasks == ref.tasks and other.adapters == ref.adapters
        assert other.weights == pytest.approx(ref.weights, abs=1e-5)
        assert other.similarities == pytest.approx(ref.similarities, abs=1e-5)


@PROPERTY_SETTINGS
@given(data=st.data(), query=queries, strategy=st.sampled_from(LEARNED))
def test_ood_exclusion_never_returns_an_excluded_task(routers, slice_tasks, data, query, strategy):
    names = [t.task for t in slice_tasks]
    excluded = data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=len(names) - 1))
    r = routers[strategy].route(query, exclude_tasks=excluded)
    assert not excluded & set(r.tasks) and not excluded & set(r.adapters)
    # the remaining tasks still serve, unless none is close enough (the store's calibrated floor)
    assert r.adapters or r.fallback_reason == "below_floor"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(scores=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), tau=st.floats(1e-3, 10.0))
def test_softmax_weights_are_a_distribution_for_any_scores(scores, tau):
    w = softmax(scores, tau)
    assert all(x >= 0 for x in w) and math.isclose(sum(w), 1.0, abs_tol=1e-9)
    best = max(range(len(scores)), key=lambda i: scores[i])
    assert w[best] == max(w)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pairs=st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0.0, 1.0)), min_size=1, max_size=8),
       mapping=st.dictionaries(st.sampled_from("abcdef"), st.sampled_from("xyz")))
def test_merging_tasks_by_adapter_keeps_a_distribution(pairs, mapping):
    tasks = [t for t, _ in pairs]
    adapters, weights = merge_by_adapter(tasks, [w for _, w in pairs], mapping or None)
    assert len(adapters) == len(set(adapters)) == len(weights)
    if adapters:
        assert all(w >= 0 for w in weights) and math.isclose(sum(weights), 1.0, abs_tol=1e-9)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(weights=st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4),
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4).map(lambda ws: [w / sum(ws) for w in ws]),
))
def test_override_accepts_exactly_the_valid_distributions(weights):
    adapters = [f"a{i}" for i in range(len(weights))]
    valid = all(math.isfinite(w) and w >= 0 for w in weights) and abs(sum(weights) - 1.0) <= 1e-4
    if valid:
        assert override_route(adapters, weights, known_adapters=adapters).weights == weights
    else:
        with pytest.raises(InvalidInputError):
            override_route(adapters, weights, known_adapters=adapters)
