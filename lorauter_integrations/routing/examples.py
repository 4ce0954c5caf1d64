"""Task-aware composition by vector-DB example retrieval (2026).

Every validation example is its own Chroma record. Retrieve the ``n`` nearest examples, give
each the similarity ``exp(-d)`` (d: cosine distance), sum per task, normalise, keep the smallest
set of tasks whose mass reaches ``top_p`` (nucleus), renormalise, and map tasks to adapters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

from .base import Router, Stopwatch, merge_by_adapter
from ..route import Route, empty_reason

if TYPE_CHECKING:
    from ..store import TaskStore


def nucleus(scores: dict[str, float], top_p: float) -> list[tuple[str, float]]:
    """Normalise ``scores``, keep the best entries until their mass reaches ``top_p``, renormalise."""
    total = sum(scores.values())
    ranked = sorted(((t, s / total) for t, s in scores.items()), key=lambda x: (-x[1], x[0]))
    kept, mass = [], 0.0
    for t, p in ranked:
        kept.append((t, p))
        mass += p
        if mass >= top_p - 1e-12:
            break
    z = sum(p for _, p in kept)
    return [(t, p / z) for t, p in kept]


class ExamplesRouter(Router):
    strategy = "examples"

    def __init__(self, store: TaskStore, task_to_adapter: Mapping[str, str] | None = None, *,
                 n: int = 100, top_p: float = 0.9):
        self.store, self.task_to_adapter, self.n, self.top_p = store, task_to_adapter, n, top_p

    def _route_batch(self, texts, *, exclude, known):
        sw = Stopwatch(len(texts))
        q = self.store.encode(texts)
        sw.lap("encode")
        hits = self.store.nearest_examples(q, self.n, exclude=exclude)
        indexed = set(self.store.domains())  # per call: tasks another process indexed meanwhile count
        sw.lap("query")
        out = []
        for row in hits:
            scores: dict[str, float] = {}
            for task, d in row:
                if task in indexed:  # examples of a half-indexed task are ignored
                    scores[task] = scores.get(task, 0.0) + math.exp(-d)
            kept = nucleus(scores, self.top_p) if scores else []
            tasks = [t for t, _ in kept]
            probs = [p for _, p in kept]
            adapters, weights = merge_by_adapter(tasks, probs, self.task_to_adapter)
            out.append((tasks, probs, adapters, weights))
        sw.lap("weights")
        timings = sw.result()
        return [Route(strategy=self.strategy, tasks=t, similarities=s, adapters=a, weights=w,
                      fallback=not a, fallback_reason=empty_reason(t, a), timings_ms=timings)
                for t, s, a, w in out]
