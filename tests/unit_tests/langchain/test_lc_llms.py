"""LoRAuterLLM on the tiny routed engine: routed invoke, stream, batch (one engine call), async."""

from __future__ import annotations

import pytest
from langchain_core.prompts import PromptTemplate

from lorauter_integrations.langchain import LoRAuterCallbackHandler, LoRAuterLLM

from lc_support import SENTIMENT, TRANSLATION, count_engine_calls


@pytest.fixture
def llm(tiny_engine):
    return LoRAuterLLM(engine=tiny_engine, max_tokens=6)


def test_generate_attaches_each_prompts_route(llm):
    result = llm.generate([TRANSLATION, SENTIMENT])
    infos = [g[0].generation_info for g in result.generations]
    assert [i["lorauter"]["tasks"][0] for i in infos] == ["task_b", "task_a"]
    assert [r["tasks"][0] for r in result.llm_output["lorauter"]] == ["task_b", "task_a"]
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(i["completion_tokens"] for i in infos)


def test_batch_is_one_engine_call_and_equals_prompts_run_alone(llm, tiny_engine, monkeypatch):
    alone = [llm.invoke(TRANSLATION), llm.invoke(SENTIMENT)]
    calls = count_engine_calls(monkeypatch, tiny_engine)
    assert llm.batch([TRANSLATION, SENTIMENT]) == alone
    assert calls == [2]


def test_stream_joins_to_the_invoke_answer_and_reaches_callbacks(llm):
    handler = LoRAuterCallbackHandler()
    pieces = list(llm.stream(TRANSLATION, config={"callbacks": [handler]}))
    assert "".join(pieces) == llm.invoke(TRANSLATION)
    assert handler.records[-1].route.tasks[0] == "task_b"
    assert handler.records[-1].output_tokens >= 1


def test_override_applies_to_the_call(llm):
    handler = LoRAuterCallbackHandler()
    llm.invoke(TRANSLATION, config={"callbacks": [handler], "metadata": {"lorauter": {"adapters": ["a"]}}})
    assert handler.records[-1].route.adapters == ["a"]


async def test_async_batch_is_one_engine_call(llm, tiny_engine, monkeypatch):
    calls = count_engine_calls(monkeypatch, tiny_engine)
    out = await llm.abatch([TRANSLATION, SENTIMENT, TRANSLATION])
    assert calls == [3]
    assert out[0] == out[2]
    assert [p async for p in llm.astream(TRANSLATION)]


def test_prompt_template_chain(llm):
    chain = PromptTemplate.from_template("Translate to French: {text}") | llm
    assert isinstance(chain.invoke({"text": "the cat"}), str)


@pytest.mark.parametrize("use_async", [False, True])
async def test_batch_routes_each_prompt_with_its_own_configs_override(llm, tiny_engine, monkeypatch, use_async):
    handler = LoRAuterCallbackHandler()
    configs = [
        {"callbacks": [handler], "metadata": {"lorauter": {"adapters": ["c"]}}},
        {"callbacks": [handler], "metadata": {"lorauter": {"strategy": "base"}}},
        {"callbacks": [handler]},
    ]
    prompts = [TRANSLATION, TRANSLATION, SENTIMENT]
    alone = [llm.invoke(p, config=c) for p, c in zip(prompts, configs)]
    expected = [r.route.adapters for r in handler.records]
    assert expected[0] == ["c"] and expected[1] == [] and expected[2] not in (["c"], [])
    handler.records.clear()
    calls = count_engine_calls(monkeypatch, tiny_engine)
    out = await llm.abatch(prompts, config=configs) if use_async else llm.batch(prompts, config=configs)
    assert calls == [3]
    assert out == alone
    assert sorted(map(tuple, (r.route.adapters for r in handler.records))) == sorted(map(tuple, expected))


def test_batch_overrides_follow_their_prompts_when_a_cache_answers_some(tiny_engine, monkeypatch):
    from langchain_core.caches import InMemoryCache

    llm = LoRAuterLLM(engine=tiny_engine, max_tokens=6, cache=InMemoryCache())
    llm.invoke(TRANSLATION)  # cached: the batch below sends only the other two prompts to the model
    handler = LoRAuterCallbackHandler()
    calls = count_engine_calls(monkeypatch, tiny_engine)
    llm.batch([TRANSLATION, SENTIMENT, TRANSLATION + " Please."], config=[
        {"callbacks": [handler], "metadata": {"lorauter": {"strategy": "base"}}},
        {"callbacks": [handler], "metadata": {"lorauter": {"adapters": ["c"]}}},
        {"callbacks": [handler], "metadata": {"lorauter": {"strategy": "base"}}},
    ])
    assert calls == [2]
    routed = sorted(tuple(r.route.adapters) for r in handler.records if r.route is not None)
    assert routed == [(), ("c",)]
