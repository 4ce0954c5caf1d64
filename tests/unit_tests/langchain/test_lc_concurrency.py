"""Issue 7: 32 concurrent LangChain `abatch` requests with different routes equal one-by-one runs."""

from __future__ import annotations

import asyncio

from lc_support import SENTIMENT, TRANSLATION

from lorauter_integrations.langchain import ChatLoRAuter

QUESTION = "Question: who wrote the novel about a white whale? Answer:"


async def test_32_concurrent_abatch_requests_equal_sequential_invokes(tiny_engine):
    chat = ChatLoRAuter(engine=tiny_engine, max_tokens=5)
    prompts = [[SENTIMENT, TRANSLATION, QUESTION][i % 3] + f" (request {i})" for i in range(32)]
    one_by_one = [chat.invoke(p) for p in prompts]
    # Two abatch calls and single ainvokes in flight at once, all on the same engine.
    first, second, *singles = await asyncio.gather(
        chat.abatch(prompts[:16]), chat.abatch(prompts[16:24]), *(chat.ainvoke(p) for p in prompts[24:])
    )
    concurrent = [*first, *second, *singles]
    assert [m.content for m in concurrent] == [m.content for m in one_by_one]
    assert [m.response_metadata["lorauter"]["adapters"] for m in concurrent] == \
        [m.response_metadata["lorauter"]["adapters"] for m in one_by_one]
    assert len({tuple(m.response_metadata["lorauter"]["adapters"]) for m in one_by_one}) > 1
