"""`RoutedModel.generate` takes the usual transformers generation arguments or refuses them by name,
and decoding raises no transformers deprecation warning about the cache (issue 14)."""

from __future__ import annotations

import warnings

import pytest

from lorauter_integrations.errors import InvalidInputError

PROMPT = "Translate to French: the cat sits on the mat."


@pytest.fixture
def engine(tiny_loaded, tiny_pool_dir):
    from lorauter_integrations.adapters.pool import AdapterPool
    from lorauter_integrations.engine import RoutedModel

    return RoutedModel(tiny_loaded, pool=AdapterPool.from_dir(tiny_pool_dir), store=None)


def test_do_sample_false_and_a_generation_config_decode_greedily(engine):
    from transformers import GenerationConfig

    route = engine.route_from_override(["a"])
    greedy = engine.generate([PROMPT], [route], max_new_tokens=5)[0].text
    assert engine.generate([PROMPT], [route], max_new_tokens=5, do_sample=False, temperature=0.7)[0].text == greedy
    cfg = GenerationConfig(max_new_tokens=5, do_sample=False)
    out = engine.generate([PROMPT], [route], generation_config=cfg)[0]
    assert out.text == greedy and out.completion_tokens <= 5
    sampled = [engine.generate([PROMPT], [route], max_new_tokens=5, do_sample=True, seed=s)[0].text for s in (1, 2, 3)]
    assert len(set(sampled)) > 1  # do_sample=True samples (temperature 1 by default)


@pytest.mark.parametrize("name", ["top_k", "repetition_penalty", "num_beams"])
def test_unsupported_generation_arguments_are_refused_naming_the_accepted_ones(engine, name):
    with pytest.raises(InvalidInputError, match=rf"{name}.*accepted: .*do_sample.*generation_config"):
        engine.generate([PROMPT], [engine.route_from_override([])], max_new_tokens=2, **{name: 5})


def test_decoding_raises_no_cache_deprecation_warning(engine):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate([PROMPT, PROMPT + " Now."], [engine.route_from_override(["a"]), engine.route_from_override(["b"])],
                        max_new_tokens=4)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "cache" in m.lower()], messages
