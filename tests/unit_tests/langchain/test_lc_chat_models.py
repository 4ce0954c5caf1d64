"""ChatLoRAuter on the tiny routed engine: routing, metadata, streaming, batching, async, tools."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate

from lorauter_integrations.errors import InvalidInputError, UnknownAdapterError
from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterCallbackHandler
from lorauter_integrations.langchain.chat_models import messages_to_chat

from lc_support import SENTIMENT, TRANSLATION, run_together


@pytest.fixture
def chat(tiny_engine):
    return ChatLoRAuter(engine=tiny_engine, max_tokens=6)


def test_invoke_routes_on_the_last_human_message_and_shows_the_route(chat):
    msg = chat.invoke([HumanMessage(SENTIMENT), AIMessage("positive"), HumanMessage(TRANSLATION)])
    route = msg.response_metadata["lorauter"]
    assert route["tasks"][0] == "task_b"
    assert route["strategy"] == "lorauter"
    assert abs(sum(route["weights"]) - 1) < 1e-6
    assert msg.response_metadata["model_name"] == "tiny-random-llama"


def test_usage_metadata_counts_prompt_and_generated_tokens(chat):
    msg = chat.invoke(TRANSLATION)
    usage = msg.usage_metadata
    assert usage["input_tokens"] > 5
    assert 1 <= usage["output_tokens"] <= 6
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_routing_input_can_be_the_whole_conversation(tiny_engine):
    messages = [HumanMessage(SENTIMENT), HumanMessage(SENTIMENT), HumanMessage("Translate to French: yes")]
    last = ChatLoRAuter(engine=tiny_engine).routing_text(messages)
    whole = ChatLoRAuter(engine=tiny_engine, routing_input="conversation").routing_text(messages)
    assert last == "Translate to French: yes"
    assert whole.count(SENTIMENT) == 2
    assert tiny_engine.route(whole).tasks[0] == "task_a"
    assert tiny_engine.route(last).tasks[0] == "task_b"


def test_routing_input_system_and_last_user_includes_the_system_prompt(tiny_engine):
    messages = [SystemMessage("You translate to French."), HumanMessage(SENTIMENT), HumanMessage("hello")]
    text = ChatLoRAuter(engine=tiny_engine, routing_input="system_and_last_user").routing_text(messages)
    assert text == "You translate to French.\nhello"


def test_metadata_override_fixes_the_adapters(chat):
    msg = chat.invoke(TRANSLATION, config={"metadata": {"lorauter": {"adapters": ["a", "c"], "weights": [0.25, 0.75]}}})
    route = msg.response_metadata["lorauter"]
    assert (route["adapters"], route["weights"]) == (["a", "c"], [0.25, 0.75])


def test_metadata_override_can_select_the_base_model(chat):
    msg = chat.invoke(TRANSLATION, config={"metadata": {"lorauter": {"strategy": "base"}}})
    assert msg.response_metadata["lorauter"]["adapters"] == []
    assert msg.response_metadata["lorauter"]["strategy"] == "base"


def test_metadata_override_can_exclude_tasks(chat):
    msg = chat.invoke(TRANSLATION, config={"metadata": {"lorauter": {"exclude_tasks": ["task_b"]}}})
    assert "task_b" not in msg.response_metadata["lorauter"]["tasks"]


def test_a_bad_override_is_a_clear_error(chat):
    with pytest.raises(InvalidInputError, match="allowed keys"):
        chat.invoke(TRANSLATION, config={"metadata": {"lorauter": {"adapter": ["a"]}}})
    with pytest.raises(UnknownAdapterError):
        chat.invoke(TRANSLATION, config={"metadata": {"lorauter": {"adapters": ["nope"]}}})


def test_stream_joins_to_the_invoke_answer_and_carries_the_route_once(chat):
    chunks = list(chat.stream(TRANSLATION))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == chat.invoke(TRANSLATION).content
    assert chunks[-1].chunk_position == "last"
    assert sum(1 for c in chunks if "lorauter" in c.response_metadata) == 1
    assert "lorauter" in chunks[0].response_metadata
    assert full.response_metadata["lorauter"]["tasks"][0] == "task_b"
    assert full.usage_metadata["output_tokens"] >= 1
    assert full.response_metadata["model_name"] == "tiny-random-llama"


def test_streaming_flag_streams_under_invoke(tiny_engine):
    tokens: list[str] = []

    from langchain_core.callbacks import BaseCallbackHandler

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token, **kwargs):
            tokens.append(token)

    msg = ChatLoRAuter(engine=tiny_engine, max_tokens=6, streaming=True).invoke(TRANSLATION, config={"callbacks": [Collect()]})
    assert "".join(tokens) == msg.content
    assert msg.response_metadata["lorauter"]["tasks"][0] == "task_b"


def test_batch_items_share_the_running_batch_and_equal_items_run_alone(chat, tiny_engine):
    inputs = [TRANSLATION, SENTIMENT, "Answer the question: who painted the Mona Lisa?"]
    alone = [chat.invoke(x) for x in inputs]
    batched, rows = run_together(tiny_engine, 3, lambda: chat.batch(inputs))
    assert rows == 3  # one decoding step served all three
    assert [m.content for m in batched] == [m.content for m in alone]
    assert [m.response_metadata["lorauter"]["tasks"][0] for m in batched] == ["task_b", "task_a", "task_c"]


def test_batch_items_are_separate_runs_with_their_own_config(chat):
    handler = LoRAuterCallbackHandler()
    configs = [
        {"callbacks": [handler], "tags": ["first"]},
        {"callbacks": [handler], "tags": ["second"], "metadata": {"lorauter": {"adapters": ["c"]}}},
    ]
    out = chat.batch([TRANSLATION, TRANSLATION], config=configs)
    assert out[1].response_metadata["lorauter"]["adapters"] == ["c"]
    assert sorted(r.tags[0] for r in handler.records) == ["first", "second"]
    assert len({r.run_id for r in handler.records}) == 2


def test_batch_with_return_exceptions_fails_only_the_bad_item(chat):
    configs = [{}, {"metadata": {"lorauter": {"adapters": ["nope"]}}}]
    out = chat.batch([TRANSLATION, SENTIMENT], config=configs, return_exceptions=True)
    assert isinstance(out[0], AIMessage)
    assert isinstance(out[1], UnknownAdapterError)


def test_stop_sequences_cut_the_answer(chat):
    text = chat.invoke(TRANSLATION).content
    assert len(text) >= 2
    stop = text[1:3] if text[1:3].strip() else text[1:]
    cut = chat.invoke(TRANSLATION, stop=[stop]).content
    assert cut == text[: text.find(stop)]
    assert ChatLoRAuter(engine=chat.engine, max_tokens=6, stop=[stop]).invoke(TRANSLATION).content == cut


def test_max_tokens_is_honoured_per_call(chat):
    msg = chat.invoke(TRANSLATION, max_tokens=2)
    assert msg.usage_metadata["output_tokens"] <= 2


async def test_async_calls_leave_the_event_loop_free(chat):
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    msg = await chat.ainvoke(TRANSLATION)
    chunks = [c async for c in chat.astream(SENTIMENT)]
    many = await chat.abatch([TRANSLATION, SENTIMENT])
    done.set()
    await task
    assert ticks > 3
    assert msg.response_metadata["lorauter"]["tasks"][0] == "task_b"
    assert chunks[-1].chunk_position == "last"
    assert [m.response_metadata["lorauter"]["tasks"][0] for m in many] == ["task_b", "task_a"]


async def test_astream_stopped_early_releases_the_engine(chat):
    async for _ in chat.astream(TRANSLATION, max_tokens=6):
        break
    await asyncio.sleep(0.2)  # the producer thread closes the engine stream
    msg = await asyncio.wait_for(chat.ainvoke(SENTIMENT), timeout=30)
    assert msg.content is not None


def test_prompt_model_parser_chain(chat):
    from langchain_core.output_parsers import StrOutputParser

    chain = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]) | chat | StrOutputParser()
    assert isinstance(chain.invoke({"q": TRANSLATION}), str)


# ---------------------------------------------------------------- tools and structured output


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_messages_to_chat_writes_tool_calls_and_results_as_text():
    chat = messages_to_chat([
        SystemMessage("sys"),
        HumanMessage("what is 1+2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1"}]),
        ToolMessage("3", tool_call_id="call_1"),
    ])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    assert '{"name": "add", "arguments": {"a": 1, "b": 2}}' in chat[2]["content"]
    assert chat[3]["content"] == '<tool_response name="add">\n3\n</tool_response>'


def test_bind_tools_rejects_a_choice_that_is_not_a_tool(chat):
    with pytest.raises(ValueError, match="tool_choice"):
        chat.bind_tools([add], tool_choice="multiply")


def test_a_forced_tool_call_always_comes_back_as_a_call_never_a_crash(chat):
    msg = chat.bind_tools([add], tool_choice="add").invoke("what is 1 + 2?")
    calls = msg.tool_calls + msg.invalid_tool_calls
    assert calls and calls[0]["name"] == "add"
    assert msg.response_metadata["lorauter"]["strategy"] == "lorauter"


def test_tool_calls_stream_as_one_final_chunk(chat):
    chunks = list(chat.bind_tools([add], tool_choice="any").stream("what is 1 + 2?"))
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert (full.tool_calls + full.invalid_tool_calls)[0]["name"] == "add"


def test_structured_output_reports_unparseable_answers_instead_of_crashing(chat):
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    for method in ("function_calling", "json_schema", "json_mode"):
        out = chat.with_structured_output(Person, method=method, include_raw=True).invoke("Erick, 27 years old")
        assert isinstance(out["raw"], AIMessage)
        assert out["parsed"] is None or isinstance(out["parsed"], Person)
        assert (out["parsed"] is None) == (out["parsing_error"] is not None) or method == "function_calling"
