"""A LlamaIndex query engine over local documents, every answer generated with routed adapters.

    python examples/llamaindex_query_engine.py

Runs offline: the demo model (SmolLM2-135M-Instruct) with its Flan LoRA pool, and local sentence
embeddings. The LLM routes on each *question*, not on the prompt padded with retrieved context
(see scripts/query_routing_study.py for why), and every route is printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402

from lorauter_integrations import RoutedModel  # noqa: E402
from lorauter_integrations.llama_index import LoRAuterEmbedding, LoRAuterLLM, collect_routes  # noqa: E402

DOCUMENTS = [
    "Customer review of the Aurora kettle: it boils a litre in two minutes, the handle stays cool, "
    "and it has worked every morning for a year. Five stars.",
    "Customer review of the Zephyr fan: loud, wobbly, and it stopped turning after a week. "
    "The shop refused a refund.",
    "Travel note: the museum opens at nine, tickets cost twelve euros, and the guided tour in "
    "German starts at eleven.",
    "Team memo: the quarterly report is due on Friday; Maria collects the sales figures and "
    "Tom writes the summary.",
]

QUESTIONS = [
    "Is the review of the Zephyr fan positive or negative?",
    "Translate to German: the museum opens at nine.",
    "Summarize the team memo in one sentence.",
    "Who writes the summary of the quarterly report?",
]


def main() -> None:
    engine = RoutedModel.demo()
    Settings.llm = LoRAuterLLM(engine=engine, max_new_tokens=48)
    Settings.embed_model = LoRAuterEmbedding()

    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])
    query_engine = index.as_query_engine(similarity_top_k=2)

    for question in QUESTIONS:
        with collect_routes() as routes:  # the route(s) of the LLM calls made for this query
            response = query_engine.query(question)
        print(f"Q: {question}\nA: {str(response).strip()}")
        for route in routes:
            mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(route.adapters, route.weights)) or "base model"
            print(f"   route [{route.strategy}] tasks {route.tasks[:3]} -> {mix}")
        print()


if __name__ == "__main__":
    main()
