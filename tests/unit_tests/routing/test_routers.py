"""Every router: valid weights, determinism, OOD exclusion, shared adapters, floor fallback."""

from __future__ import annotations

import math

import pytest

from lorauter_integrations.errors import InvalidInputError, UnknownAdapterError
from lorauter_integrations.routing import (
    STRATEGIES, LoRAuterRouter, build_router, merge_by_adapter, override_route, softmax,
)
from lorauter_integrations.routing.examples import nucleus
from lorauter_integrations.route import Route

QUERIES = [
    "Review: the film was a joyless slog.\nIs this movie review sentence negative or positive?",
    "Translate to English: Das Wetter ist heute schön.",
    "Premise: A man plays guitar. Hypothesis: A person makes music. Does the premise entail the hypothesis?",
]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_weights_are_a_distribution_and_deterministic(shared_store, strategy):
    router = build_router(strategy, shared_store)
    for q in QUERIES:
        r1 = router.route(q, known_task="sst2")
        r2 = router.route(q, known_task="sst2")
        assert r1.adapters == r2.adapters and r1.weights == r2.weights
        assert all(w >= 0 for w in r1.weights)
        assert len(r1.adapters) == len(r1.weights)
        if r1.adapters:
            assert math.isclose(sum(r1.weights), 1.0, abs_tol=1e-9)
        else:
            assert r1.fallback


def test_lorauter_routes_sentiment_to_a_sentiment_task(shared_store):
    r = build_router("lorauter", shared_store).route(QUERIES[0])
    assert shared_store.task(r.tasks[0]).domain == "sentiment"
    assert len(r.tasks) == 3 and r.similarities == sorted(r.similarities, reverse=True)


def test_lorauter_weights_are_softmax_of_similarities_over_tau(shared_store):
    r = LoRAuterRouter(shared_store, tau=0.2, representation="paper").route(QUERIES[1])
    assert r.weights == pytest.approx(softmax(r.similarities, 0.2))


@pytest.mark.parametrize("strategy", ["lorauter", "lorauter-paper", "retriever", "examples"])
def test_ood_exclusion_never_returns_the_excluded_task(shared_store, flan_queries, strategy):
    router = build_router(strategy, shared_store, floor=None)  # no floor: without its own task a query may fall below it
    for q in flan_queries[::20]:
        r = router.route(q.inputs, exclude_tasks={q.task})
        assert q.task not in r.tasks and q.task not in r.adapters
        assert r.adapters  # other tasks still serve


def test_tasks_sharing_an_adapter_add_their_weights(shared_store):
    t2a = {"sst2": "sentiment-lora", "yelp_polarity_reviews": "sentiment-lora", "rte": "nli-lora",
           "snli": "nli-lora", "wmt16_translate_deen": "mt", "wmt14_enfr": "mt", "arc_easy": "qa", "trivia_qa": "qa"}
    plain = LoRAuterRouter(shared_store, k=3).route(QUERIES[0])
    mapped = LoRAuterRouter(shared_store, t2a, k=3).route(QUERIES[0])
    expected: dict[str, float] = {}
    for t, w in zip(plain.tasks, plain.weights):
        expected[t2a[t]] = expected.get(t2a[t], 0.0) + w
    assert dict(zip(mapped.adapters, mapped.weights)) == pytest.approx(expected)
    assert len(mapped.adapters) == len(set(mapped.adapters))


def test_merge_by_adapter_adds_shared_weights_and_renormalises_over_mapped_tasks():
    adapters, weights = merge_by_adapter(["a", "b", "c"], [0.5, 0.3, 0.2], {"a": "x", "b": "x"})
    assert adapters == ["x"] and weights == pytest.approx([1.0])
    adapters, weights = merge_by_adapter(["a", "b", "c"], [0.5, 0.3, 0.2], {"a": "x", "b": "y", "c": "x"})
    assert adapters == ["x", "y"] and weights == pytest.approx([0.7, 0.3])


def test_similarity_floor_falls_back_to_the_base_model(shared_store):
    r = LoRAuterRouter(shared_store, floor=1.01).route(QUERIES[0])
    assert r.fallback and r.adapters == [] and r.weights == [] and r.tasks  # tasks still shown
    assert r.fallback_reason == "below_floor"
    r = LoRAuterRouter(shared_store, floor=-1.0).route(QUERIES[0])
    assert not r.fallback and r.adapters and r.fallback_reason is None


def test_a_route_says_why_it_fell_back(shared_store):
    from lorauter_integrations.routing import BaseModelRouter, override_route

    tasks = shared_store.domains()
    assert LoRAuterRouter(shared_store).route(QUERIES[0], exclude_tasks=set(tasks)).fallback_reason == "no_match"
    assert LoRAuterRouter(shared_store, task_to_adapter={}).route(QUERIES[0]).fallback_reason == "no_adapter"
    assert BaseModelRouter().route(QUERIES[0]).fallback_reason == "base_requested"
    assert override_route([]).fallback_reason == "base_requested"
    with pytest.raises(InvalidInputError):  # a reason on a route that did not fall back
        Route(strategy="x", adapters=["a"], weights=[1.0], fallback_reason="below_floor")


def test_below_the_floor_a_damped_router_keeps_the_mixture_at_reduced_strength(shared_store):
    full = LoRAuterRouter(shared_store).route(QUERIES[0])
    damped = LoRAuterRouter(shared_store, floor=1.01, below_floor="damped", damping=0.25).route(QUERIES[0])
    assert damped.fallback and damped.adapters == full.adapters
    assert damped.fallback_reason == "below_floor_damped" and damped.is_damped
    assert damped.weights == pytest.approx([0.25 * w for w in full.weights])
    above = LoRAuterRouter(shared_store, floor=-1.0, below_floor="damped", damping=0.25).route(QUERIES[0])
    assert not above.fallback and above.weights == pytest.approx(full.weights)
    with pytest.raises(InvalidInputError):
        LoRAuterRouter(shared_store, below_floor="zero")
    with pytest.raises(InvalidInputError):
        LoRAuterRouter(shared_store, damping=1.5)


def test_softmax_is_stable_and_sharpens_with_small_tau():
    assert sum(softmax([1000.0, 999.0], 0.2)) == pytest.approx(1.0)
    assert softmax([0.9, 0.5], 0.05)[0] > softmax([0.9, 0.5], 1.0)[0]
    with pytest.raises(InvalidInputError):
        softmax([0.1], 0.0)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    kept = nucleus({"a": 6.0, "b": 3.0, "c": 1.0}, 0.85)
    assert [t for t, _ in kept] == ["a", "b"]
    assert sum(p for _, p in kept) == pytest.approx(1.0)


def test_examples_router_weights_follow_exp_minus_distance(shared_store):
    r = build_router("examples", shared_store, top_p=1.0, n=16).route(QUERIES[1])
    hits = shared_store.nearest_examples(shared_store.encode([QUERIES[1]]), 16)[0]
    mass: dict[str, float] = {}
    for t, d in hits:
        mass[t] = mass.get(t, 0.0) + math.exp(-d)
    z = sum(mass.values())
    assert dict(zip(r.tasks, r.weights)) == pytest.approx({t: m / z for t, m in mass.items()})


def test_retriever_gives_uniform_weights_to_k_adapters(shared_store):
    r = build_router("retriever", shared_store, k=3).route(QUERIES[2])
    assert len(r.adapters) == 3 and r.weights == pytest.approx([1 / 3] * 3)


def test_oracle_needs_the_known_task_and_uses_it(shared_store):
    router = build_router("oracle", shared_store)
    assert router.route("anything", known_task="rte").adapters == ["rte"]
    with pytest.raises(InvalidInputError):
        router.route("anything")


def test_base_strategy_uses_no_adapter(shared_store):
    r = build_router("base", shared_store).route(QUERIES[0])
    assert r.fallback and not r.adapters


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_prompt_is_refused(shared_store, text):
    with pytest.raises(InvalidInputError):
        build_router("lorauter", shared_store).route(text)


def test_unknown_strategy_is_a_typed_error(shared_store):
    with pytest.raises(InvalidInputError, match="unknown strategy"):
        build_router("nope", shared_store)


def test_override_route_validates_ids_and_weights():
    r = override_route(["a", "b"], [0.25, 0.75], known_adapters=["a", "b"])
    assert r.adapters == ["a", "b"] and r.weights == [0.25, 0.75] and r.strategy == "override"
    assert override_route(["a", "b"]).weights == [0.5, 0.5]
    with pytest.raises(UnknownAdapterError):
        override_route(["zz"], known_adapters=["a"])
    for bad in ([-0.5, 1.5], [float("nan"), 1.0], [0.3, 0.3], [1.0]):
        with pytest.raises(InvalidInputError):
            override_route(["a", "b"], bad)


def test_route_is_json_serialisable(shared_store):
    from lorauter_integrations.routing import Route

    r = build_router("lorauter", shared_store).route(QUERIES[0])
    again = Route.model_validate_json(r.model_dump_json())
    assert again == r and set(r.timings_ms) >= {"encode", "query", "weights", "total"}


def test_retriever_and_uniform_see_tasks_indexed_after_they_were_built(fresh_store, flan_tasks):
    retriever = build_router("retriever", fresh_store, k=8)
    uniform = build_router("uniform", fresh_store)
    new = flan_tasks[4]  # not in the fresh store
    assert new.task not in uniform.route("anything").adapters
    fresh_store.index([new], progress=False)
    assert new.task in uniform.route("anything").adapters
    assert new.task in retriever.route(new.examples[0].inputs).adapters
    fresh_store.remove(new.task)
    assert new.task not in uniform.route("anything").adapters
    assert new.task not in retriever.route(new.examples[0].inputs).adapters
