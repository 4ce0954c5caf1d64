"""LoRAuter routing (arXiv 2601.21795): match the query to *tasks*, compose their adapters.

1. embed the query; 2. cosine similarity to every task representation (a Chroma query);
3. keep the top-K tasks, weight them ``softmax(sim / tau)``; 4. map tasks to adapters, adding the
weights of tasks that share an adapter. Below an optional similarity floor, fall back to the
base model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .base import Router, Stopwatch, merge_by_adapter, softmax
from ..route import Route

if TYPE_CHECKING:
    from ..store import TaskStore


class LoRAuterRouter(Router):
    """Top-K tasks by similarity, softmax(sim/tau) weights, tasks mapped to adapters.

    ``representation="hybrid"`` (default, strategy ``lorauter``) uses our improved task vectors;
    ``representation="paper"`` (strategy ``lorauter-paper``) is the paper's mean sentence embedding.
    """

    def __init__(
        self,
        store: TaskStore,
        task_to_adapter: Mapping[str, str] | None = None,
        *,
        k: int = 3,
        tau: float = 0.2,
        floor: float | None = None,
        representation: str = "hybrid",
    ):
        self.store, self.task_to_adapter = store, task_to_adapter
        self.k, self.tau, self.floor, self.representation = k, tau, floor, representation
        self.strategy = "lorauter" if representation == "hybrid" else f"lorauter-{representation}"

    def _route_batch(self, texts, *, exclude, known):
        sw = Stopwatch(len(texts))
        dense = self.store.encode(texts)
        feats = self.store.featurize(self.representation, texts, dense)
        sw.lap("encode")
        ranked = self.store.nearest_tasks(self.representation, feats, self.k, exclude=exclude)
        sw.lap("query")
        routes = []
        for top in ranked:
            tasks = [t for t, _ in top]
            sims = [s for _, s in top]
            if not top or (self.floor is not None and sims[0] < self.floor):
                adapters, weights, fallback = [], [], True
            else:
                adapters, weights = merge_by_adapter(tasks, softmax(sims, self.tau), self.task_to_adapter)
                fallback = not adapters
            routes.append((tasks, sims, adapters, weights, fallback))
        sw.lap("weights")
        timings = sw.result()
        return [Route(strategy=self.strategy, tasks=t, similarities=s, adapters=a, weights=w,
                      fallback=f, timings_ms=timings) for t, s, a, w, f in routes]
