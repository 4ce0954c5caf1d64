"""A tool-calling agent where every step — the agent's own decisions and the tools' work — is routed.

The agent model (`ChatLoRAuter` with two tools bound) decides which tool a request needs; the
tools themselves call the same routed model on their sub-task ("classify sentiment",
"translate"), so each of them gets the adapters of its own task. A `LoRAuterCallbackHandler`
prints the route of every LLM step, the tool steps included.

The agent loop is written out (bind_tools -> tool calls -> ToolMessage -> final answer) so that
each step is visible; the first step requires a tool call (``tool_choice="any"``), which a
135M model follows far more reliably than an optional one.

    python examples/langchain_agent.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from lorauter_integrations import RoutedModel  # noqa: E402
from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterCallbackHandler  # noqa: E402

engine = RoutedModel.demo()
model = ChatLoRAuter(engine=engine, max_tokens=48)
handler = LoRAuterCallbackHandler()


@tool
def classify_sentiment(text: str) -> str:
    """Say whether a review or a sentence is positive or negative."""
    question = f"Would the following phrase be considered positive or negative?\n\n{text}"
    return model.invoke(question, max_tokens=4, config={"callbacks": [handler], "tags": ["tool:sentiment"]}).text


@tool
def translate_to_english(text: str) -> str:
    """Translate a sentence from another language into English."""
    question = f"{text}\n\nCould you please translate this to English?"
    return model.invoke(question, max_tokens=40, config={"callbacks": [handler], "tags": ["tool:translate"]}).text


TOOLS = {t.name: t for t in (classify_sentiment, translate_to_english)}
REQUESTS = [
    "Is this review positive or negative? 'A gorgeous, witty, seductive movie.'",
    "Translate this into English: 'Der Hund schläft im Garten.'",
]


def run(request: str) -> str:
    messages = [HumanMessage(request)]
    decide = model.bind_tools(list(TOOLS.values()), tool_choice="any")
    step = decide.invoke(messages, config={"callbacks": [handler], "tags": ["agent:decide"]})
    messages.append(step)
    if not step.tool_calls:
        return f"(no usable tool call: {step.invalid_tool_calls or step.content!r})"
    for call in step.tool_calls:
        print(f"  agent calls {call['name']}({call['args']})")
        result = TOOLS[call["name"]].invoke(call["args"]) if call["name"] in TOOLS else "unknown tool"
        print(f"  tool result {result!r}")
        messages.append(ToolMessage(str(result), tool_call_id=call["id"], name=call["name"]))
    answer = model.invoke(messages, config={"callbacks": [handler], "tags": ["agent:answer"]})
    return answer.text


def main() -> None:
    for request in REQUESTS:
        print(f"user: {request}")
        handler.clear()
        print(f"agent: {run(request)!r}")
        print("routes of this request's LLM steps:")
        for record in handler.records:
            mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(record.route.adapters, record.route.weights))
            step = next((t for t in record.tags if t.startswith(("agent:", "tool:"))), "?")
            print(f"  {step:16} tasks {record.route.tasks[:3]} -> {mix or 'base model'}")
        print()


if __name__ == "__main__":
    main()
