"""The demo walkthrough (`lorauter demo`, `make demo`): held-out queries of several task families
answered in one batched call, each with its route."""

from __future__ import annotations

from .data import bundled_data_dir, read_jsonl
from .engine.local import RoutedModel

DEMO_TASKS = ("sst2", "snli", "glue_mrpc", "wmt16_translate_deen", "common_gen", "arc_easy")


def run_demo(max_new_tokens: int = 32, echo=print) -> None:
    """`lorauter demo` / `make demo`: one held-out query per task family answered in ONE batched
    call (each row with its own composed adapters); prints each answer with its route.

    Needs only the installed package (the Flan data and the adapters ship inside it) and the demo
    model (``lorauter install-demo-model``).
    """
    import time

    t0 = time.perf_counter()
    engine = RoutedModel.demo()
    echo(f"demo engine ready in {time.perf_counter() - t0:.1f} s: {engine.model_name} on {engine.device}, "
         f"{len(engine.pool.ids)} adapters, {len(engine.store)} tasks in the store\n")
    queries = {}
    for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl"):
        if q.task in DEMO_TASKS and q.task not in queries and len(q.inputs) < 400:
            queries[q.task] = q
    items = [queries[t] for t in DEMO_TASKS if t in queries]
    routes = engine.route_many([q.inputs for q in items])
    t0 = time.perf_counter()
    outs = engine.generate([q.inputs for q in items], routes, max_new_tokens=max_new_tokens)
    dt = time.perf_counter() - t0
    for q, out in zip(items, outs):
        r = out.route
        mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(r.adapters, r.weights)) or "base model"
        echo(f"[{q.task}] {q.inputs.strip()[:110]!r}")
        echo(f"  route    tasks {r.tasks}  ->  adapters {mix}  ({r.timings_ms.get('total', 0):.1f} ms)")
        echo(f"  answer   {out.text.strip()[:110]!r}")
        echo(f"  expected {str(q.targets)[:110]!r}\n")
    tokens = sum(o.completion_tokens for o in outs)
    echo(f"{len(items)} requests with {len({r.key() for r in routes})} different routes answered in one "
         f"batched call: {tokens} tokens in {dt:.1f} s")


__all__ = ["DEMO_TASKS", "run_demo"]
