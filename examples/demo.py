"""`make demo`: route real prompts of several tasks through the local model and its LoRA pool.

Builds the demo engine (SmolLM2-135M-Instruct, the project's trained Flan adapters, a Chroma task
store of the 48 Flan tasks), then answers one held-out query per task family in ONE batched call
(each row with its own composed adapters) and prints each answer with its route.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lorauter_integrations import RoutedModel  # noqa: E402
from lorauter_integrations.data import bundled_data_dir, read_jsonl  # noqa: E402

TASKS = ["sst2", "snli", "glue_mrpc", "wmt16_translate_deen", "common_gen", "arc_easy"]


def main() -> None:
    t0 = time.perf_counter()
    engine = RoutedModel.demo()
    print(f"demo engine ready in {time.perf_counter() - t0:.1f} s: {engine.model_name} on {engine.device}, "
          f"{len(engine.pool.ids)} adapters, {len(engine.store)} tasks in the store\n")

    queries = {}
    for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl"):
        if q.task in TASKS and q.task not in queries and len(q.inputs) < 400:
            queries[q.task] = q
    items = [queries[t] for t in TASKS if t in queries]

    routes = engine.route_many([q.inputs for q in items])
    t0 = time.perf_counter()
    outs = engine.generate([q.inputs for q in items], routes, max_new_tokens=32)
    dt = time.perf_counter() - t0
    for q, out in zip(items, outs):
        r = out.route
        mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(r.adapters, r.weights)) or "base model"
        print(f"[{q.task}] {q.inputs.strip()[:110]!r}")
        print(f"  route    tasks {r.tasks}  ->  adapters {mix}  ({r.timings_ms.get('total', 0):.1f} ms)")
        print(f"  answer   {out.text.strip()[:110]!r}")
        print(f"  expected {str(q.targets)[:110]!r}\n")
    tokens = sum(o.completion_tokens for o in outs)
    print(f"{len(items)} requests with {len({r.key() for r in routes})} different routes answered in one "
          f"batched call: {tokens} tokens in {dt:.1f} s")


if __name__ == "__main__":
    main()
