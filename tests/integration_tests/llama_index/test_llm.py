"""LoRAuterLLM with the real demo engine: routed complete/chat/stream, async, overrides, events."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from lorauter_integrations.errors import InvalidInputError
from lorauter_integrations.llama_index import collect_routes
from lorauter_integrations.route import Route

pytestmark = pytest.mark.slow

SENTIMENT = "Is this movie review positive or negative? 'A joyless, plodding film with no redeeming scenes.'"
TRANSLATE = "Translate to German: The weather is nice today."


def decision(route):
    """A route without its timings: what two routings of the same text agree on."""
    data = route.model_dump(mode="json") if isinstance(route, Route) else dict(route)
    data.pop("timings_ms")
    return data


def test_complete_returns_text_usage_and_the_route_of_its_prompt(llm, engine):
    response = llm.complete(SENTIMENT)
    route = response.additional_kwargs["lorauter"]
    assert isinstance(route, dict) and route["adapters"]  # JSON-serialisable, as in LangChain
    assert decision(route) == decision(engine.route(SENTIMENT))
    assert response.text.strip()
    assert response.additional_kwargs["completion_tokens"] > 0
    assert response.additional_kwargs["total_tokens"] == (
        response.additional_kwargs["prompt_tokens"] + response.additional_kwargs["completion_tokens"]
    )


def test_chat_routes_on_the_last_user_message_not_the_system_prompt(llm, engine):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="You are a careful assistant. Answer briefly."),
        ChatMessage(role=MessageRole.USER, content=TRANSLATE),
    ]
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT and response.message.content
    assert decision(response.additional_kwargs["lorauter"]) == decision(engine.route(TRANSLATE))


def test_streamed_chunks_join_to_the_non_streamed_answer_with_the_route_on_every_chunk(llm):
    expected = llm.complete(SENTIMENT).text
    chunks = list(llm.stream_complete(SENTIMENT))
    assert "".join(c.delta for c in chunks) == chunks[-1].text == expected
    assert all(c.additional_kwargs["lorauter"] == chunks[0].additional_kwargs["lorauter"] for c in chunks)
    assert chunks[-1].additional_kwargs["finish_reason"] in ("stop", "length")

    chat = [ChatMessage(role=MessageRole.USER, content=SENTIMENT)]
    chat_chunks = list(llm.stream_chat(chat))
    assert chat_chunks[-1].message.content == llm.chat(chat).message.content


async def test_async_calls_equal_sync_calls(llm):
    chat = [ChatMessage(role=MessageRole.USER, content=TRANSLATE)]
    assert (await llm.acomplete(TRANSLATE)).text == llm.complete(TRANSLATE).text
    sync_reply = llm.chat(chat)
    assert (await llm.achat(chat)).message.content == sync_reply.message.content
    chunks = [c async for c in await llm.astream_chat(chat)]
    assert chunks[-1].message.content == sync_reply.message.content
    text_chunks = [c async for c in await llm.astream_complete(TRANSLATE)]
    assert "".join(c.delta for c in text_chunks) == sync_reply.message.content


def test_per_call_override_picks_the_adapters_or_the_base_model(llm, engine):
    adapter = sorted(engine.pool.ids)[0]
    forced = llm.complete(SENTIMENT, lorauter={"adapters": [adapter]}).additional_kwargs["lorauter"]
    assert forced["adapters"] == [adapter] and forced["weights"] == [1.0]
    assert llm.complete(SENTIMENT, lorauter={"strategy": "base"}).additional_kwargs["lorauter"]["adapters"] == []
    with pytest.raises(InvalidInputError, match="lorauter"):
        llm.complete(SENTIMENT, lorauter={"adapter": adapter})


def test_every_routed_call_reaches_a_registered_event_handler(llm, route_events):
    with collect_routes() as routes:
        response = llm.complete(SENTIMENT)
        list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=TRANSLATE)]))
    assert [e.route for e in route_events] == routes
    first, second = route_events
    assert first.route.model_dump(mode="json") == response.additional_kwargs["lorauter"]
    assert (first.routing_text, first.source) == (SENTIMENT, "prompt")
    assert (second.routing_text, second.source) == (TRANSLATE, "last_user")
    assert first.model_name == llm.metadata.model_name and first.span_id is not None


def test_metadata_describes_a_function_calling_chat_model(llm, engine):
    meta = llm.metadata
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.context_window == engine.context_window and meta.num_output == llm.max_new_tokens
    assert meta.model_name == engine.model_name
