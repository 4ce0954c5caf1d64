"""LoRAuterLLM inside LlamaIndex machinery (real demo engine): a RAG query engine and two agents."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent, ToolCallResult
from llama_index.core.tools import FunctionTool

from lorauter_integrations.llama_index import LoRAuterEmbedding, LoRAuterLLM, collect_routes

pytestmark = pytest.mark.slow

DOCS = [
    "Customer review of the Zephyr fan: loud, wobbly, and it stopped turning after a week.",
    "The museum opens at nine; tickets cost twelve euros; the German tour starts at eleven.",
    "sqlite3.connect(database) opens a connection to the SQLite database file database.",
]
QUESTION = "Is the review of the Zephyr fan positive or negative?"


def decision(route):
    """A route without its timings: what two routings of the same text agree on."""
    return route.model_dump(exclude={"timings_ms"})


@pytest.fixture(scope="module")
def index():
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=LoRAuterEmbedding())


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


def test_query_engine_answers_from_the_documents_routed_on_the_question(index, llm, engine):
    query_engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    with collect_routes() as routes:
        response = query_engine.query(QUESTION)
    assert str(response).strip()
    assert any("Zephyr" in n.node.get_content() for n in response.source_nodes)
    assert [decision(r) for r in routes] == [decision(engine.route(QUESTION))]


def test_query_engine_can_route_on_the_synthesised_prompt_instead(index, engine, route_events):
    llm = LoRAuterLLM(engine=engine, max_new_tokens=8, routing_input="last_user")
    index.as_query_engine(llm=llm, similarity_top_k=2).query(QUESTION)
    [event] = route_events
    assert event.source == "last_user"
    assert QUESTION in event.routing_text and "Customer review of the Zephyr fan" in event.routing_text


def test_streaming_query_engine_routes_on_the_question(index, llm, engine):
    query_engine = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True)
    with collect_routes() as routes:
        # The synthesiser opens the LLM stream lazily, at the first token asked for.
        text = "".join(query_engine.query(QUESTION).response_gen)
    assert text.strip()
    assert [decision(r) for r in routes] == [decision(engine.route(QUESTION))]


async def test_function_agent_calls_the_tool_and_every_step_is_routed(engine):
    # Room for the call's arguments: a call cut off by the budget is invalid, not a call.
    llm = LoRAuterLLM(engine=engine, max_new_tokens=48)
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(multiply)],
        llm=llm,
        system_prompt="You are a calculator. Use the multiply tool.",
        initial_tool_choice="multiply",
    )
    with collect_routes() as routes:
        handler = agent.run(user_msg="What is 6 times 7?", max_iterations=4, early_stopping_method="generate")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        await handler
    assert results and results[0].tool_name == "multiply"
    assert results[0].tool_output.raw_output == multiply(**results[0].tool_kwargs)
    assert len(routes) >= 2  # the call step and the answer step, each routed
    assert all(r.adapters or r.fallback for r in routes)


async def test_react_agent_runs_with_a_tool_and_every_step_is_routed(llm, engine):
    llm = LoRAuterLLM(engine=engine, max_new_tokens=64)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    question = "What is 6 times 7? Use the multiply tool."
    with collect_routes() as routes:
        output = await agent.run(user_msg=question, max_iterations=3, early_stopping_method="generate")
    assert str(output.response.content or "").strip()
    # Every step routes on the user's request, never on a ReAct observation or format reminder.
    assert routes and all(decision(r) == decision(engine.route(question)) for r in routes)
