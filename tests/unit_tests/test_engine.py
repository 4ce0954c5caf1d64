"""RoutedModel: batched generation with per-row routes, stop sequences, streaming, truncation."""

from __future__ import annotations

import threading

import pytest
import torch

from lorauter_integrations.compose import PackedLinears
from lorauter_integrations.engine import Generation, RoutedModel
from lorauter_integrations.errors import InvalidInputError, UnknownAdapterError
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route

PROMPTS = [
    "Is this review positive or negative? The film was a joy.",
    "Translate to French: the cat sits on the mat.",
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    "Summarize: the committee met on Tuesday.",
]


def _r(adapters, weights=None):
    weights = weights or [1.0 / len(adapters)] * len(adapters)
    return Route(strategy="test", adapters=adapters, weights=weights)


ROUTES = [_r(["a"]), _r(["b", "c"], [0.6, 0.4]), Route(strategy="base", fallback=True), _r(["a", "b", "c"])]


@pytest.fixture(params=[False, True], ids=["nn_linear", "packed"])
def engine(request, tiny_loaded, tiny_pool_dir):
    """The engine with plain ``nn.Linear`` layers, and with oneDNN-packed ones (the CPU default)."""
    if request.param and not PackedLinears.supports(tiny_loaded.model):
        pytest.skip("this torch build has no oneDNN packed linear kernels")
    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), prepack=request.param)


def test_mixed_route_batch_equals_each_item_run_alone(engine):
    batch = engine.generate(PROMPTS, ROUTES, max_new_tokens=12)
    alone = [engine.generate([p], [r], max_new_tokens=12)[0] for p, r in zip(PROMPTS, ROUTES)]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.route for g in batch] == ROUTES
    assert len({g.text for g in batch}) > 1


def test_adapters_change_the_output_and_the_base_route_does_not(engine):
    prompt = [PROMPTS[0]]
    base = engine.generate(prompt, [Route(strategy="base")], max_new_tokens=12)[0].text
    routed = engine.generate(prompt, [_r(["a"])], max_new_tokens=12)[0].text
    assert routed != base


def test_merged_and_hooked_single_route_give_the_same_text(engine):
    merged = engine.generate(PROMPTS, [ROUTES[3]] * 4, max_new_tokens=12)
    engine.merge = False
    hooked = engine.generate(PROMPTS, [ROUTES[3]] * 4, max_new_tokens=12)
    assert [g.text for g in merged] == [g.text for g in hooked]


def test_generation_leaves_base_weights_bit_identical(engine):
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.generate(PROMPTS[:2], [ROUTES[3], ROUTES[3]], max_new_tokens=4)  # merged path
    engine.generate(PROMPTS, ROUTES, max_new_tokens=4)  # per-row path
    after = engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in engine.model.modules())


def test_usage_and_length_finish_reason(engine):
    [g] = engine.generate([PROMPTS[1]], [ROUTES[0]], max_new_tokens=7)
    assert isinstance(g, Generation)
    assert g.finish_reason == "length" and g.completion_tokens == 7
    assert g.prompt_tokens == len(engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[1]}], tokenize=True, add_generation_prompt=True)["input_ids"])


def test_multi_token_stop_sequence_cuts_the_text(engine):
    full = engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=20)[0].text
    stop = full[len(full) // 3 : len(full) // 3 + 4]
    assert len(engine.tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    [g] = engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=20, stop=[stop, "never-there"])
    assert g.finish_reason == "stop"
    assert g.text == full[: full.find(stop)]
    assert g.completion_tokens < 20


def test_stream_joins_to_the_generated_text(engine):
    for stop in (None, ["zzz-not-there"]):
        [g] = engine.generate([PROMPTS[2]], [ROUTES[1]], max_new_tokens=15, stop=stop)
        chunks = list(engine.stream(PROMPTS[2], ROUTES[1], max_new_tokens=15, stop=stop))
        assert "".join(c.text for c in chunks) == g.text
        assert all(c.route == ROUTES[1] for c in chunks)
        assert chunks[-1].finish_reason == g.finish_reason
        assert chunks[-1].completion_tokens == g.completion_tokens
        assert chunks[-1].prompt_tokens == g.prompt_tokens


def test_stream_with_stop_never_shows_the_stop_text(engine):
    full = engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=20)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    chunks = list(engine.stream(PROMPTS[0], ROUTES[0], max_new_tokens=20, stop=[stop]))
    assert "".join(c.text for c in chunks) == full[: full.find(stop)]
    assert chunks[-1].finish_reason == "stop"


def test_long_prompt_is_left_truncated_and_the_route_says_so(engine):
    long_prompt = "word " * 5000 + "final question?"
    [g] = engine.generate([long_prompt], [ROUTES[0]], max_new_tokens=8)
    assert g.route.truncated
    assert g.prompt_tokens == engine.context_window - 8
    [short] = engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=8)
    assert not short.route.truncated


def test_sampling_is_reproducible_with_a_seed(engine):
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    one = engine.generate(PROMPTS, ROUTES, seed=7, **kw)
    two = engine.generate(PROMPTS, ROUTES, seed=7, **kw)
    assert [g.text for g in one] == [g.text for g in two]


def test_top_p_near_zero_is_greedy(engine):
    greedy = engine.generate(PROMPTS, ROUTES, max_new_tokens=8)
    nucleus = engine.generate(PROMPTS, ROUTES, max_new_tokens=8, temperature=0.7, top_p=1e-6, seed=1)
    assert [g.text for g in greedy] == [g.text for g in nucleus]


@pytest.mark.parametrize("prompt", ["", "   \n", [], [{"role": "user", "content": "  "}], [{"role": "x", "content": "hi"}]])
def test_empty_or_malformed_prompt_raises_invalid_input(engine, prompt):
    with pytest.raises(InvalidInputError):
        engine.generate([prompt], [ROUTES[0]])


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": "x"},
                                    {"max_new_tokens": 10_000}])
def test_bad_generation_parameters_raise_invalid_input(engine, kwargs):
    with pytest.raises(InvalidInputError):
        engine.generate([PROMPTS[0]], [ROUTES[0]], **kwargs)


def test_override_routes_are_validated_against_the_pool(engine):
    assert engine.route_from_override(["a", "c"]).weights == [0.5, 0.5]
    with pytest.raises(UnknownAdapterError):
        engine.route_from_override(["nope"])
    with pytest.raises(InvalidInputError):
        engine.route_from_override(["a", "b"], [0.7, 0.7])
    with pytest.raises(InvalidInputError):
        engine.route_from_override(["a", "b"], [float("nan"), 1.0])


def test_unrouted_prompts_use_the_router(tiny_loaded, tiny_pool_dir):
    from lorauter_integrations.routing import BaseModelRouter

    engine = RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), router=BaseModelRouter())
    [g] = engine.generate([PROMPTS[0]], max_new_tokens=3)
    assert g.route.strategy == "base" and g.route.is_base


def test_prompts_without_router_or_route_get_a_clear_error(engine):
    with pytest.raises(InvalidInputError, match="pass router= or store="):
        engine.generate([PROMPTS[0]])


def test_concurrent_callers_get_the_same_outputs_as_sequential(engine):
    expected = {i: engine.generate([p], [r], max_new_tokens=10)[0].text for i, (p, r) in enumerate(zip(PROMPTS, ROUTES))}
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            if i % 2:
                got[i] = "".join(c.text for c in engine.stream(PROMPTS[i], ROUTES[i], max_new_tokens=10))
            else:
                got[i] = engine.generate([PROMPTS[i]], [ROUTES[i]], max_new_tokens=10)[0].text
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and got == expected


def test_abandoned_stream_restores_the_model(engine):
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    stream = engine.stream(PROMPTS[0], ROUTES[3], max_new_tokens=20)
    next(stream)
    stream.close()
    assert engine.loop.wait_idle(60)  # the row is freed at the next step boundary
    assert not engine.composer.active
    assert all(torch.equal(before[k], v) for k, v in engine.model.state_dict().items())
    assert engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=2)  # lock released




def test_activate_applies_a_route_to_the_raw_model_until_restored(engine):
    ids = torch.arange(10)[None]
    with torch.no_grad():
        base = engine.model(input_ids=ids).logits
        with engine.activate(ROUTES[1]):
            routed = engine.model(input_ids=ids).logits
            blocked = threading.Thread(target=engine.generate, args=([PROMPTS[0]], [ROUTES[0]]),
                                       kwargs={"max_new_tokens": 2})
            blocked.start()
            blocked.join(timeout=0.5)
            assert blocked.is_alive()  # other callers wait while the model carries this route
        blocked.join(timeout=60)
        assert not blocked.is_alive()
        assert torch.equal(engine.model(input_ids=ids).logits, base)
    assert (routed - base).abs().max() > 1e-3


def test_none_generation_options_mean_defaults(engine):
    [g] = engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=3, temperature=None, top_p=None)
    assert g.completion_tokens <= 3


def test_a_stream_resumed_on_other_live_threads_releases_the_engine(engine):
    expected = engine.generate([PROMPTS[1]], [ROUTES[1]], max_new_tokens=6)[0].text
    stream = engine.stream(PROMPTS[1], ROUTES[1], max_new_tokens=6)
    keep_alive = threading.Event()  # live threads never share an ident, so a stale owner shows
    pieces, threads = [], []
    while True:
        box: list = []

        def step():
            box.append(next(stream, None))
            keep_alive.wait()

        threads.append(threading.Thread(target=step, daemon=True))
        threads[-1].start()
        while not box:
            threads[-1].join(timeout=0.01)
        if box[0] is None:
            break
        pieces.append(box[0].text)
    keep_alive.set()
    assert "".join(pieces) == expected
    assert not engine.composer.active
    assert engine.generate([PROMPTS[0]], [ROUTES[0]], max_new_tokens=2)  # the lock was released


def test_prompts_of_very_different_lengths_prefill_in_groups_with_the_same_outputs(engine):
    prompts = ["Hi?", "Translate to French: the cat sits on the mat. " * 3, PROMPTS[0], "Summarize: ok."]
    lengths = [len(engine.prompts.token_ids(p)) for p in prompts]
    assert len(engine.loop._prefill_groups(lengths)) > 1
    grouped = engine.generate(prompts, ROUTES, max_new_tokens=8)
    engine.loop.prefill_padding_slack = float("inf")  # one padded batch
    assert len(engine.loop._prefill_groups(lengths)) == 1
    padded = engine.generate(prompts, ROUTES, max_new_tokens=8)
    alone = [engine.generate([p], [r], max_new_tokens=8)[0] for p, r in zip(prompts, ROUTES)]
    assert [g.text for g in grouped] == [g.text for g in padded] == [g.text for g in alone]


def test_a_chat_the_template_rejects_raises_invalid_input(engine, monkeypatch):
    monkeypatch.setattr(engine.tokenizer, "chat_template", (  # the tokenizer is shared: undo after
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    ))
    with pytest.raises(InvalidInputError, match="chat template rejects"):
        engine.generate([[{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]], [ROUTES[0]])
