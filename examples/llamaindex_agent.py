"""LlamaIndex agents on the routed local model: every agent step and every tool's own LLM call
is routed to LoRA adapters, and an instrumentation handler prints each routing decision.

    python examples/llamaindex_agent.py

Runs offline on the demo model (SmolLM2-135M-Instruct, CPU). A 135M model is a weak agent: it
follows the forced first tool call (``initial_tool_choice``) well, free tool choice less so.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from llama_index.core.agent.workflow import FunctionAgent, ReActAgent, ToolCall, ToolCallResult  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from lorauter_integrations import RoutedModel  # noqa: E402
from lorauter_integrations.llama_index import LoRAuterLLM, LoRAuterRouteEvent  # noqa: E402


class PrintRoutes(BaseEventHandler):
    """Prints every routing decision LoRAuterLLM dispatches."""

    @classmethod
    def class_name(cls) -> str:
        return "PrintRoutes"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LoRAuterRouteEvent):
            r = event.route
            mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(r.adapters, r.weights)) or "base model"
            print(f"   [route on {event.source}: {event.routing_text[:60]!r}] -> {mix}")


def main() -> None:
    get_dispatcher().add_event_handler(PrintRoutes())
    llm = LoRAuterLLM(engine=RoutedModel.demo(), max_new_tokens=64)

    # Tools that call the routed model themselves: each call is routed on its own text.
    def classify_sentiment(text: str) -> str:
        """Say whether a review is positive or negative."""
        return llm.complete(f"Is this review positive or negative? {text}").text.strip()

    def translate_to_german(text: str) -> str:
        """Translate an English text into German."""
        return llm.complete(f"Translate to German: {text}").text.strip()

    # One-argument tools: a 135M model fills one argument reliably, several less so.
    tools = [FunctionTool.from_defaults(classify_sentiment), FunctionTool.from_defaults(translate_to_german)]

    async def run(agent, question: str) -> None:
        print(f"\n== {type(agent).__name__}: {question}")
        handler = agent.run(user_msg=question, max_iterations=4, early_stopping_method="generate")
        async for ev in handler.stream_events():
            if isinstance(ev, ToolCall) and not isinstance(ev, ToolCallResult):
                print(f"   tool call: {ev.tool_name}({ev.tool_kwargs})")
            elif isinstance(ev, ToolCallResult):
                print(f"   tool result: {str(ev.tool_output.content)[:80]!r}")
        print(f"   answer: {str(await handler).strip()[:200]}")

    async def demo() -> None:
        review = "The battery died after two days and support never answered."
        await run(FunctionAgent(tools=tools, llm=llm, initial_tool_choice="classify_sentiment",
                                system_prompt="Use the tools to answer."),
                  f"Is this review positive or negative? '{review}'")
        await run(FunctionAgent(tools=tools, llm=llm, initial_tool_choice="translate_to_german",
                                system_prompt="Use the tools to answer."),
                  "Translate 'the station is closed today' into German.")
        await run(ReActAgent(tools=tools, llm=llm), f"Use a tool: is this review positive? '{review}'")

    asyncio.run(demo())


if __name__ == "__main__":
    main()
