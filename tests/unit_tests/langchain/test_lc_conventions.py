"""Ordinary LangChain features on the routed models (issue 14): the global LLM cache keyed by
route, token counting with the engine's tokenizer (``trim_messages``), copies and pickling."""

from __future__ import annotations

import copy
import pickle

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages

from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterLLM

from lc_support import SENTIMENT, TRANSLATION

BASE = {"metadata": {"lorauter": {"strategy": "base"}}}


@pytest.fixture
def global_cache():
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(None)


def test_chat_model_global_cache_never_answers_a_base_call_with_the_routed_answer(tiny_engine, global_cache):
    chat = ChatLoRAuter(engine=tiny_engine, max_tokens=6)
    routed = chat.invoke(TRANSLATION)
    assert routed.response_metadata["lorauter"]["adapters"]  # the router picked adapters
    base = chat.invoke(TRANSLATION, config=BASE)
    assert base.response_metadata["lorauter"]["adapters"] == []
    assert base.response_metadata["lorauter"]["strategy"] == "base"
    uncached = ChatLoRAuter(engine=tiny_engine, max_tokens=6, cache=False).invoke(TRANSLATION, config=BASE)
    assert base.content == uncached.content
    # each route has its own cache entry, and hits it again
    assert chat.invoke(TRANSLATION, config=BASE).content == base.content
    assert chat.invoke(TRANSLATION).response_metadata["lorauter"]["adapters"] == routed.response_metadata["lorauter"]["adapters"]
    assert len(global_cache._cache) == 2


def test_completion_model_global_cache_keys_by_route(tiny_engine, global_cache):
    llm = LoRAuterLLM(engine=tiny_engine, max_tokens=6)
    routed = llm.invoke(TRANSLATION)
    base = llm.invoke(TRANSLATION, config=BASE)
    forced = llm.invoke(TRANSLATION, config={"metadata": {"lorauter": {"adapters": ["c"]}}})
    expected_base = tiny_engine.generate([TRANSLATION], [tiny_engine.route_from_override([])], max_new_tokens=6)[0].text
    expected_c = tiny_engine.generate([TRANSLATION], [tiny_engine.route_from_override(["c"])], max_new_tokens=6)[0].text
    assert base == expected_base and forced == expected_c
    assert llm.invoke(TRANSLATION) == routed
    assert len(global_cache._cache) == 3


def test_token_counts_use_the_engine_tokenizer_and_its_chat_template(tiny_engine):
    chat = ChatLoRAuter(engine=tiny_engine, max_tokens=6)
    tok = tiny_engine.tokenizer
    assert chat.get_token_ids(TRANSLATION) == tok(TRANSLATION, add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens(TRANSLATION) == len(tok(TRANSLATION, add_special_tokens=False)["input_ids"]) > 0
    llm = LoRAuterLLM(engine=tiny_engine)
    assert llm.get_num_tokens(SENTIMENT) == chat.get_num_tokens(SENTIMENT)

    messages = [SystemMessage("Answer briefly."), HumanMessage(SENTIMENT), AIMessage("positive"),
                HumanMessage(TRANSLATION)]
    n = chat.get_num_tokens_from_messages(messages)
    chat_tokens = tok.apply_chat_template(
        [{"role": r, "content": m.content} for r, m in zip(["system", "user", "assistant", "user"], messages)],
        tokenize=True, add_generation_prompt=True)
    if isinstance(chat_tokens, dict) or hasattr(chat_tokens, "keys"):
        chat_tokens = chat_tokens["input_ids"]
    assert n == len(chat_tokens)
    assert n > sum(chat.get_num_tokens(m.content) for m in messages)  # the template's own tokens count


def test_trim_messages_with_the_model_as_token_counter_trims(tiny_engine):
    chat = ChatLoRAuter(engine=tiny_engine, max_tokens=6)
    messages = [SystemMessage("Answer briefly."), HumanMessage(SENTIMENT), AIMessage("positive"),
                HumanMessage(TRANSLATION)]
    total = chat.get_num_tokens_from_messages(messages)
    assert trim_messages(messages, max_tokens=total, token_counter=chat, strategy="last") == messages
    trimmed = trim_messages(messages, max_tokens=total - 1, token_counter=chat, strategy="last",
                            include_system=True, start_on="human")
    assert trimmed == [messages[0], messages[3]]
    assert chat.get_num_tokens_from_messages(trimmed) <= total - 1


@pytest.mark.parametrize("cls", [ChatLoRAuter, LoRAuterLLM])
def test_copies_share_the_engine_and_pickling_is_refused_with_a_reason(tiny_engine, cls):
    llm = cls(engine=tiny_engine, max_tokens=4)
    for clone in (copy.copy(llm), copy.deepcopy(llm), llm.model_copy(deep=True)):
        assert clone.engine is tiny_engine
        assert clone.invoke(TRANSLATION) is not None
    # A model without its engine would be useless in another process: refused, saying why (no
    # lock or thread error from deep inside).
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(llm)
