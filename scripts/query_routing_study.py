"""Which text should a RAG query engine route on: the user's question, or the synthesised prompt?

A LlamaIndex query engine sends the LLM its text-QA prompt: a system message plus a user message
holding the retrieved context and then the question. This study routes Flan test queries three
ways, exactly as `LoRAuterLLM` picks its routing text (`select_routing_text`):

- ``question``  the query engine's ``query_str`` (LoRAuterLLM's default, ``routing_input="question"``);
- ``last_user`` the synthesised user message: retrieved context + question;
- ``prompt``    the whole prompt: system message + that user message.

The retrieved context is real retrieval (`LoRAuterEmbedding`, top-k chunks) from a knowledge base
unrelated to the tasks: the documentation of Python standard-library modules, as a developer-docs
assistant would hold. Routing accuracy is scored with the project's routing evaluation (task and
domain top-1 of the route's best task).

    python scripts/query_routing_study.py                      # all 1,200 test_dev queries
    python scripts/query_routing_study.py --per-task 5 --json  # quick
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections import defaultdict
from pathlib import Path

import typer
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.schema import MetadataMode, QueryBundle
from tqdm.auto import tqdm

from lorauter_integrations.data import bundled_data_dir, load_tasks, read_jsonl
from lorauter_integrations.lab.evaluation.routing_eval import evaluate_routing
from lorauter_integrations.llama_index import LoRAuterEmbedding
from lorauter_integrations.llama_index.context import select_routing_text
from lorauter_integrations.settings import cache_dir
from lorauter_integrations.store import TaskStore

# A developer-docs knowledge base: unrelated to every Flan task, available offline everywhere.
KNOWLEDGE_BASE_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message",
    "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "hmac", "http.client", "itertools",
    "json", "logging", "mmap", "multiprocessing", "pathlib", "pickle", "queue", "random", "re", "sched",
    "secrets", "shutil", "socket", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "time", "tracemalloc", "typing", "unittest",
    "urllib.parse", "uuid", "weakref", "zipfile",
)
CONDITIONS = ("question", "last_user", "prompt")


def module_documentation(name: str, max_chars: int = 6000) -> str:
    """A module's docstring followed by its public members' docstrings."""
    module = importlib.import_module(name)
    parts = [f"{name}: {inspect.getdoc(module) or ''}"]
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for member in sorted(public):
        doc = inspect.getdoc(getattr(module, member, None))
        if doc and not isinstance(getattr(module, member, None), (str, int, float)):
            parts.append(f"{name}.{member}: {doc}")
    return "\n\n".join(parts)[:max_chars]


def main(
    validation: Path = typer.Option(None, help="Validation JSONL (default: bundled Flan)."),
    test: Path = typer.Option(None, help="Test JSONL (default: bundled Flan test_dev)."),
    per_task: int = typer.Option(0, help="Queries per task (0 = all)."),
    context_chunks: int = typer.Option(2, help="Retrieved chunks in the prompt (the query engine's top-k)."),
    strategies: str = typer.Option("lorauter,lorauter-paper", help="Routing strategies, comma separated."),
    store_dir: Path = typer.Option(None, "--store", help="Task store dir (default: a cache dir; re-runs reuse it)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    data = bundled_data_dir()
    tasks = load_tasks(validation or data / "validation.jsonl")
    queries = read_jsonl(test or data / "test_dev.jsonl")
    if per_task:
        kept, seen = [], defaultdict(int)
        for q in queries:
            seen[q.task] += 1
            if seen[q.task] <= per_task:
                kept.append(q)
        queries = kept

    embed = LoRAuterEmbedding()
    docs = [Document(text=module_documentation(m), metadata={"module": m}) for m in KNOWLEDGE_BASE_MODULES]
    index = VectorStoreIndex.from_documents(
        docs, embed_model=embed, transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)]
    )
    retriever = index.as_retriever(similarity_top_k=context_chunks)

    texts: dict[str, list[str]] = {c: [] for c in CONDITIONS}
    prompt_chars = []
    query_vectors = embed.get_text_embedding_batch([q.inputs for q in queries])  # one batched encode
    for q, vector in tqdm(list(zip(queries, query_vectors)), desc="retrieve + build prompts", unit="q",
                          file=sys.stderr, disable=as_json):
        nodes = retriever.retrieve(QueryBundle(query_str=q.inputs, embedding=vector))
        # What the response synthesiser formats: chunks joined by blank lines, LLM metadata mode.
        context_str = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes)
        messages = CHAT_TEXT_QA_PROMPT.format_messages(context_str=context_str, query_str=q.inputs)
        for condition in CONDITIONS:
            text, _ = select_routing_text(messages, condition, q.inputs if condition == "question" else None)
            texts[condition].append(text)
        prompt_chars.append(len(texts["prompt"][-1]))

    results = []
    store = TaskStore(store_dir or cache_dir() / "stores" / "query-routing-study")
    store.index(tasks, progress=not as_json)  # idempotent: a re-run only checks content hashes
    for strategy in [s.strip() for s in strategies.split(",") if s.strip()]:
        for condition in CONDITIONS:
            routed = [q.model_copy(update={"inputs": t}) for q, t in zip(queries, texts[condition])]
            r = evaluate_routing(store, routed, strategy=strategy, progress=not as_json)
            results.append({"strategy": strategy, "routing_input": condition, **r.model_dump(exclude={"strategy", "ood"})})

    summary = {
        "n_queries": len(queries),
        "context_chunks": context_chunks,
        "knowledge_base_modules": len(KNOWLEDGE_BASE_MODULES),
        "mean_prompt_chars": round(sum(prompt_chars) / max(1, len(prompt_chars))),
        "results": results,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{len(queries)} queries, {context_chunks} retrieved chunks, mean prompt {summary['mean_prompt_chars']} chars\n")
    print("| strategy | routing input | task top-1 | domain top-1 | task recall@3 |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['strategy']} | {r['routing_input']} | {r['task_top1']:.3f} | {r['domain_top1']:.3f} | {r['task_recall_at_k']:.3f} |")


if __name__ == "__main__":
    typer.run(main)
