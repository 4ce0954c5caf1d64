"""Routing input selection and the per-request routing context (no model needed)."""

from __future__ import annotations

import asyncio

from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT

from lorauter_integrations.llama_index import collect_routes, route_on
from lorauter_integrations.calls import current_routing_text, record_route, select_routing_text
from lorauter_integrations.route import Route

QUESTION = "Is this review positive or negative? 'The plot drags and the jokes fall flat.'"
RAG = [{"role": m.role.value, "content": m.content} for m in CHAT_TEXT_QA_PROMPT.format_messages(
    context_str="sqlite3.connect(database) opens a connection to an SQLite database file.", query_str=QUESTION
)]


def _route(task: str) -> Route:
    return Route(strategy="oracle", tasks=[task], similarities=[1.0], adapters=[task], weights=[1.0])


def test_question_mode_routes_on_the_query_engine_question_not_on_the_rag_prompt():
    assert select_routing_text(RAG, "question", QUESTION) == (QUESTION, "question")


def test_last_user_mode_routes_on_the_synthesised_message_with_its_context():
    text, source = select_routing_text(RAG, "last_user", QUESTION)
    assert source == "last_user" and "sqlite3.connect" in text and QUESTION in text


def test_conversation_mode_routes_on_every_message():
    text, source = select_routing_text(RAG, "conversation", QUESTION)
    assert source == "conversation" and text.startswith(RAG[0]["content"]) and text.endswith(RAG[-1]["content"])


def test_question_mode_without_a_question_skips_react_observations():
    chat = [
        {"role": "system", "content": "You are a ReAct agent."},
        {"role": "user", "content": "Translate 'good night' into French."},
        {"role": "assistant", "content": "Thought: I need a tool.\nAction: translate"},
        {"role": "user", "content": "Observation: bonne nuit"},
    ]
    assert select_routing_text(chat, "question") == ("Translate 'good night' into French.", "last_user")
    assert select_routing_text(chat, "last_user") == ("Observation: bonne nuit", "last_user")


def test_route_on_sets_the_text_for_the_block_only_and_nests():
    assert current_routing_text() is None
    with route_on("outer"):
        with route_on("inner"):
            assert current_routing_text() == "inner"
        with route_on(None):  # no question found: the enclosing one stays
            assert current_routing_text() == "outer"
    assert current_routing_text() is None


async def test_routes_recorded_in_worker_threads_reach_the_enclosing_collectors():
    with collect_routes() as outer:
        with collect_routes() as inner:
            await asyncio.to_thread(record_route, _route("sst2"))
        record_route(_route("wmt16_tr_en"))
    record_route(_route("ignored"))  # outside any block: nobody collects it
    assert [r.tasks[0] for r in inner] == ["sst2"]
    assert [r.tasks[0] for r in outer] == ["sst2", "wmt16_tr_en"]
