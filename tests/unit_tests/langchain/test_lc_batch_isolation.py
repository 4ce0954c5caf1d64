"""One bad item of a LangChain batch fails alone (sync and async, chat and completion models)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from lc_support import SENTIMENT, TRANSLATION
from lorauter_integrations.errors import InvalidInputError, UnknownAdapterError
from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterLLM

LONE_SURROGATE = "Translate to French: caf\udce9"


@pytest.mark.parametrize("model_class", [ChatLoRAuter, LoRAuterLLM])
@pytest.mark.parametrize("use_async", [False, True])
async def test_a_bad_item_fails_alone(tiny_engine, model_class, use_async):
    model = model_class(engine=tiny_engine, max_tokens=4)
    inputs = [TRANSLATION, LONE_SURROGATE, SENTIMENT, TRANSLATION]
    configs = [{}, {}, {}, {"metadata": {"lorauter": {"adapters": ["nope"]}}}]
    out = (await model.abatch(inputs, config=configs, return_exceptions=True) if use_async
           else model.batch(inputs, config=configs, return_exceptions=True))
    assert isinstance(out[1], InvalidInputError) and "lone surrogate" in str(out[1])
    assert isinstance(out[3], UnknownAdapterError)
    good = [out[0], out[2]]
    assert all(isinstance(o, AIMessage if model_class is ChatLoRAuter else str) for o in good)
