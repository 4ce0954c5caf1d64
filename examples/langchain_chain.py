"""An LCEL chain (prompt | model | parser) whose model call is routed per input.

Answers held-out queries of several Flan tasks through ONE `chain.batch` call: the chat model
sends all items to the engine together (one forward pass per step, each row with its own
adapters), and a `LoRAuterCallbackHandler` shows which adapters answered each input.

    python examples/langchain_chain.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

from lorauter_integrations import RoutedModel  # noqa: E402
from lorauter_integrations.data import bundled_data_dir, read_jsonl  # noqa: E402
from lorauter_integrations.langchain import ChatLoRAuter, LoRAuterCallbackHandler  # noqa: E402

TASKS = ["sst2", "snli", "copa", "glue_mrpc", "wmt16_translate_deen", "arc_easy"]


def main() -> None:
    engine = RoutedModel.demo()
    model = ChatLoRAuter(engine=engine, max_tokens=24)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | model | StrOutputParser()

    queries = {}
    for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl"):
        if q.task in TASKS and q.task not in queries and len(q.inputs) < 300:
            queries[q.task] = q
    items = [queries[t] for t in TASKS if t in queries]

    handler = LoRAuterCallbackHandler()
    # One config per item: each is its own run, tagged with its task so the route can be found.
    configs = [{"callbacks": [handler], "tags": [q.task]} for q in items]
    t0 = time.perf_counter()
    answers = chain.batch([{"question": q.inputs} for q in items], config=configs)
    elapsed = time.perf_counter() - t0

    routes = {tag: record.route for record in handler.records for tag in record.tags if tag in TASKS}
    for q, answer in zip(items, answers):
        route = routes[q.task]
        mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(route.adapters, route.weights)) or "base model"
        print(f"[{q.task}] {q.inputs.strip()[:100]!r}")
        print(f"  route    top tasks {route.tasks}  ->  {mix}")
        print(f"  answer   {answer.strip()[:100]!r}   (expected {q.targets[:60]!r})\n")
    print(f"{len(items)} inputs answered by one batched engine call in {elapsed:.1f} s\n")
    print(handler.summary())


if __name__ == "__main__":
    main()
