"""LoRAuterLLM and LlamaIndex conventions (issue 14): the route as a JSON dict on the response and on
its message (so chat memory and agents carry it), a tool call cut off by the token budget says so,
selectors route on the user's question and their replies parse (or fail with a typed error)."""

from __future__ import annotations

import json

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.selectors import LLMSingleSelector, PydanticSingleSelector
from llama_index.core.tools import FunctionTool, ToolMetadata

from lorauter_integrations.errors import ToolCallError
from lorauter_integrations.llama_index import LoRAuterLLM
from lorauter_integrations.llama_index.events import LoRAuterRouteEvent

from lc_support import SENTIMENT, TRANSLATION

CHOICES = [ToolMetadata(name="reviews", description="Film and product reviews: sentiment questions."),
           ToolMetadata(name="translation", description="Translating sentences between languages.")]


class RoutingTexts(BaseEventHandler):
    texts: list = []

    def handle(self, event, **kwargs):
        if isinstance(event, LoRAuterRouteEvent):
            self.texts.append(event.routing_text)


@pytest.fixture
def routing_texts():
    handler = RoutingTexts(texts=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield handler.texts
    finally:
        root.event_handlers.remove(handler)


@pytest.fixture
def llm(tiny_engine):
    return LoRAuterLLM(engine=tiny_engine, max_new_tokens=6)


def test_the_route_is_the_same_json_dict_on_the_response_and_its_message(llm):
    response = llm.chat([ChatMessage(role=MessageRole.USER, content=SENTIMENT)])
    route = response.additional_kwargs["lorauter"]
    assert isinstance(route, dict) and route["tasks"][0] == "task_a" and route["adapters"]
    assert response.message.additional_kwargs["lorauter"] == route
    json.dumps(response.message.additional_kwargs)  # serialisable, as LangChain's response_metadata
    streamed = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=SENTIMENT)]))
    assert streamed[-1].message.additional_kwargs["lorauter"]["adapters"] == route["adapters"]


def test_chat_memory_keeps_the_route_of_each_answer(llm):
    memory = ChatMemoryBuffer.from_defaults(token_limit=10_000)
    for question in (SENTIMENT, TRANSLATION):
        user = ChatMessage(role=MessageRole.USER, content=question)
        memory.put(user)
        memory.put(llm.chat(memory.get()).message)
    answers = [m for m in memory.get_all() if m.role == MessageRole.ASSISTANT]
    assert [m.additional_kwargs["lorauter"]["tasks"][0] for m in answers] == ["task_a", "task_b"]
    stored = json.loads(json.dumps([m.model_dump(mode="json") for m in memory.get_all()]))  # persisted as JSON
    assert ChatMessage.model_validate(stored[1]).additional_kwargs["lorauter"] == answers[0].additional_kwargs["lorauter"]


def test_a_tool_call_cut_off_by_the_token_budget_says_so_and_what_to_raise(tiny_engine):
    def lookup_weather(city: str, unit: str = "celsius") -> str:
        """Look up the current weather of a city."""
        return "sunny"

    tool = FunctionTool.from_defaults(fn=lookup_weather)
    llm = LoRAuterLLM(engine=tiny_engine, max_new_tokens=8)
    response = llm.chat_with_tools([tool], user_msg="What is the weather in Paris?", tool_required=True)
    assert response.additional_kwargs["finish_reason"] == "length"
    with pytest.raises(ToolCallError, match="token budget.*raise max_new_tokens"):
        llm.get_tool_calls_from_response(response)


def test_a_call_whose_argument_value_was_cut_off_is_not_returned_as_a_valid_call(tiny_engine):
    def lookup_weather(city: str, unit: str = "celsius") -> str:
        """Look up the current weather of a city."""
        return "sunny"

    tool = FunctionTool.from_defaults(fn=lookup_weather)
    llm = LoRAuterLLM(engine=tiny_engine, max_new_tokens=2)
    response = llm.chat_with_tools([tool], user_msg="What is the weather in Paris?", tool_required=True)
    assert response.additional_kwargs["finish_reason"] == "length"
    with pytest.raises(ToolCallError, match="token budget"):
        llm.get_tool_calls_from_response(response)


def test_llm_single_selector_routes_on_the_question_and_its_reply_parses_or_fails_typed(llm, routing_texts):
    from llama_index.core.output_parsers.base import OutputParserException

    selector = LLMSingleSelector.from_defaults(llm=llm)
    try:
        result = selector.select(CHOICES, query=SENTIMENT)
    except OutputParserException as e:  # the tiny model's random text may name no choice
        from lorauter_integrations.errors import LoRAuterError

        assert isinstance(e, LoRAuterError) and "names no choice" in str(e)
    else:
        assert result.selections and 0 <= result.selections[0].index < len(CHOICES)
    assert routing_texts == [SENTIMENT]


@pytest.mark.parametrize("reply, expected", [
    ("1", [1]), ("[2]", [2]), ("Choice 2: it is about translation.", [2]), ('[{"choice": 1, "reason": "r"}]', [1]),
    ('{"choice": "2", "reason": "r"}', [2]), ("3 or 1", [1]),
])
def test_selector_replies_of_a_small_model_parse(reply, expected):
    from llama_index.core.output_parsers.selection import SelectionOutputParser

    from lorauter_integrations.llama_index.selectors import selection_reply

    parsed = SelectionOutputParser().parse(selection_reply(reply, {"num_choices": 2})).parsed_output
    assert [a.choice for a in parsed] == expected


def test_a_selector_reply_with_no_choice_is_a_typed_error():
    from llama_index.core.output_parsers.base import OutputParserException

    from lorauter_integrations.errors import LoRAuterError
    from lorauter_integrations.llama_index.selectors import SelectorReplyError, selection_reply

    with pytest.raises(SelectorReplyError) as info:
        selection_reply("I cannot tell.", {"num_choices": 2})
    assert isinstance(info.value, OutputParserException) and isinstance(info.value, LoRAuterError)


def test_pydantic_single_selector_routes_on_the_question(llm, routing_texts):
    selector = PydanticSingleSelector.from_defaults(llm=llm)
    try:
        selector.select(CHOICES, query=TRANSLATION)
    except Exception:  # noqa: BLE001 - the tiny model's random text is not a valid call; routing is what is tested
        pass
    assert routing_texts and routing_texts[0] == TRANSLATION
