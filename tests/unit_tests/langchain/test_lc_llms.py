"""LoRAuterLLM on the tiny routed engine: routed invoke, stream, batch (one engine call), async."""

from __future__ import annotations

import pytest
from langchain_core.prompts import PromptTemplate

from lorauter_integrations.langchain import LoRAuterCallbackHandler, LoRAuterLLM

from lc_support import SENTIMENT, TRANSLATION, run_together


@pytest.fixture
def llm(tiny_engine):
    return LoRAuterLLM(engine=tiny_engine, max_tokens=6)


def test_generate_attaches_each_prompts_route(llm):
    result = llm.generate([TRANSLATION, SENTIMENT])
    infos = [g[0].generation_info for g in result.generations]
    assert [i["lorauter"]["tasks"][0] for i in infos] == ["task_b", "task_a"]
    assert [r["tasks"][0] for r in result.llm_output["lorauter"]] == ["task_b", "task_a"]
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(i["completion_tokens"] for i in infos)


def test_batch_prompts_share_the_running_batch_and_equal_prompts_run_alone(llm, tiny_engine):
    alone = [llm.invoke(TRANSLATION), llm.invoke(SENTIMENT)]
    out, rows = run_together(tiny_engine, 2, lambda: llm.batch([TRANSLATION, SENTIMENT]))
    assert out == alone and rows == 2


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


def test_async_batch_shares_the_running_batch(llm, tiny_engine):
    import asyncio

    out, rows = run_together(tiny_engine, 3, lambda: asyncio.run(llm.abatch([TRANSLATION, SENTIMENT, TRANSLATION])))
    assert rows == 3
    assert out[0] == out[2]


async def test_astream_yields_pieces(llm):
    assert [p async for p in llm.astream(TRANSLATION)]


def test_prompt_template_chain(llm):
    chain = PromptTemplate.from_template("Translate to French: {text}") | llm
    assert isinstance(chain.invoke({"text": "the cat"}), str)


@pytest.mark.parametrize("use_async", [False, True])
def test_batch_routes_each_prompt_with_its_own_configs_override(llm, tiny_engine, use_async):
    import asyncio

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
    out, rows = run_together(tiny_engine, 3, (lambda: asyncio.run(llm.abatch(prompts, config=configs))) if use_async
                             else (lambda: llm.batch(prompts, config=configs)))
    assert rows == 3
    assert out == alone
    assert sorted(map(tuple, (r.route.adapters for r in handler.records))) == sorted(map(tuple, expected))


def test_the_llm_cache_never_serves_the_answer_of_another_route(tiny_engine):
    from langchain_core.caches import InMemoryCache

    llm = LoRAuterLLM(engine=tiny_engine, max_tokens=6, cache=InMemoryCache())
    routed = llm.invoke(TRANSLATION)  # cached under the router's route
    handler = LoRAuterCallbackHandler()
    base = {"callbacks": [handler], "metadata": {"lorauter": {"strategy": "base"}}}
    out = llm.batch([TRANSLATION, SENTIMENT, TRANSLATION], config=[
        base, {"callbacks": [handler], "metadata": {"lorauter": {"adapters": ["c"]}}}, {"callbacks": [handler]},
    ])
    assert out[0] == tiny_engine.generate([TRANSLATION], [tiny_engine.route_from_override([])],
                                          max_new_tokens=6)[0].text  # the base model's answer, not the cache's
    assert out[2] == routed
    records = {tuple(r.route.adapters) for r in handler.records if r.route is not None}
    assert () in records and ("c",) in records
    # the same override again is a cache hit
    assert llm.invoke(TRANSLATION, config=base) == out[0]
