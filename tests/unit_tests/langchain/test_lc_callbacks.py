"""Callback handlers: route records of our models, and routing a stock HuggingFacePipeline."""

from __future__ import annotations

import logging
import threading

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.prompts import ChatPromptTemplate

from lorauter_integrations.errors import InvalidInputError
from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterCallbackHandler, RoutingCallbackHandler

from lc_support import SENTIMENT, TRANSLATION


def test_handler_records_each_run_with_its_parent_and_tags(tiny_engine):
    handler = LoRAuterCallbackHandler()
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | ChatLoRAuter(engine=tiny_engine, max_tokens=4)
    chain.invoke({"q": TRANSLATION}, config={"callbacks": [handler], "tags": ["demo"]})
    [record] = handler.records
    assert record.route.tasks[0] == "task_b"
    assert record.parent_run_id is not None  # the chain's run
    assert "demo" in record.tags
    assert record.input_tokens > 0 and record.output_tokens >= 1
    assert record.model_name == "tiny-random-llama"


def test_summary_shows_one_line_per_run(tiny_engine):
    handler = LoRAuterCallbackHandler()
    chat = ChatLoRAuter(engine=tiny_engine, max_tokens=4)
    chat.batch([TRANSLATION, SENTIMENT], config={"callbacks": [handler]})
    chat.invoke(TRANSLATION, config={"callbacks": [handler], "metadata": {"lorauter": {"strategy": "base"}}})
    lines = handler.summary().splitlines()
    assert len(lines) == 1 + 3
    assert "base model" in lines[-1]
    assert any("(" in line and "lorauter" in line for line in lines[1:3])


def test_runs_of_other_models_are_not_recorded():
    handler = LoRAuterCallbackHandler()
    FakeListChatModel(responses=["hi"]).invoke("hello", config={"callbacks": [handler]})
    assert handler.records == []
    assert handler.summary() == "no routed LLM runs recorded"


def test_handler_logs_each_route(tiny_engine, caplog):
    handler = LoRAuterCallbackHandler(logger=logging.getLogger("lorauter.test"))
    with caplog.at_level(logging.INFO, logger="lorauter.test"):
        ChatLoRAuter(engine=tiny_engine, max_tokens=3).invoke(TRANSLATION, config={"callbacks": [handler]})
    assert "task_b" in caplog.text


# ---------------------------------------------------------------- RoutingCallbackHandler


@pytest.fixture
def hf_llm(tiny_engine):
    pytest.importorskip("langchain_huggingface")
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    pipe = pipeline("text-generation", model=tiny_engine.model, tokenizer=tiny_engine.tokenizer,
                    max_new_tokens=6, do_sample=False, return_full_text=False)
    return HuggingFacePipeline(pipeline=pipe, model_id="tiny-random-llama")


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, before):
    after = model.state_dict()
    assert all(torch_equal(after[k], v) for k, v in before.items())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_routing_handler_runs_a_stock_pipeline_with_the_routed_adapters(tiny_engine, hf_llm):
    router = RoutingCallbackHandler(tiny_engine)
    before = snapshot(tiny_engine.model)
    base = hf_llm.invoke(TRANSLATION)
    routed = hf_llm.invoke(TRANSLATION, config={"callbacks": [router]})
    route = router.last_route
    assert route.tasks[0] == "task_b"
    composer = tiny_engine.composer
    with composer.activate(composer.composition(route), merge=tiny_engine.merge):
        expected = hf_llm.invoke(TRANSLATION)
    assert routed == expected != base
    assert_same_weights(tiny_engine.model, before)
    assert not composer.active


def test_routing_handler_routes_chat_huggingface_on_the_last_human_message(tiny_engine, hf_llm):
    from langchain_huggingface import ChatHuggingFace

    router = RoutingCallbackHandler(tiny_engine)
    chat = ChatHuggingFace(llm=hf_llm, tokenizer=tiny_engine.tokenizer)
    chat.invoke([("human", SENTIMENT), ("ai", "positive"), ("human", TRANSLATION)], config={"callbacks": [router]})
    assert router.last_route.tasks[0] == "task_b"
    assert not tiny_engine.composer.active


def test_routing_handler_restores_the_model_when_generation_fails(tiny_engine, hf_llm):
    router = RoutingCallbackHandler(tiny_engine)
    before = snapshot(tiny_engine.model)
    with pytest.raises(Exception):
        hf_llm.invoke(TRANSLATION, config={"callbacks": [router]}, pipeline_kwargs={"not_a_generate_arg": 1})
    assert router.last_route is not None  # it had routed and activated before the failure
    assert_same_weights(tiny_engine.model, before)
    assert not tiny_engine.composer.active
    # the engine's lock was released: another thread can generate
    result = []
    worker = threading.Thread(target=lambda: result.append(tiny_engine.generate([TRANSLATION], max_new_tokens=2)))
    worker.start()
    worker.join(timeout=60)
    assert result and result[0][0].completion_tokens >= 1


def test_routing_handler_refuses_a_batch_with_different_routes_and_shares_equal_ones(tiny_engine, hf_llm):
    router = RoutingCallbackHandler(tiny_engine)
    before = snapshot(tiny_engine.model)
    with pytest.raises(InvalidInputError, match="different routes"):
        hf_llm.batch([TRANSLATION, SENTIMENT], config={"callbacks": [router]})
    assert_same_weights(tiny_engine.model, before)
    assert not tiny_engine.composer.active
    same = {"callbacks": [router], "metadata": {"lorauter": {"adapters": ["a"]}}}
    assert len(hf_llm.batch([TRANSLATION, SENTIMENT], config=same)) == 2
    assert_same_weights(tiny_engine.model, before)
