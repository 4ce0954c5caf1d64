"""LoraRetriever (arXiv 2402.09997): input-aware retrieval of *adapters*, uniform weights.

Each adapter is represented by the mean embedding of a few samples of the task(s) it was
trained on; a query takes the top-k adapters by cosine similarity, each with weight 1/k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from ..encoders import l2_normalise
from .base import Router, Stopwatch
from ..route import Route, empty_reason

if TYPE_CHECKING:
    from ..store import TaskStore


class RetrieverRouter(Router):
    strategy = "retriever"

    def __init__(self, store: TaskStore, task_to_adapter: Mapping[str, str] | None = None, *,
                 k: int = 3, samples_per_adapter: int = 5):
        self.store, self.k = store, k
        self.task_to_adapter, self.samples_per_adapter = task_to_adapter, samples_per_adapter
        self._build()

    def _build(self) -> None:
        """Embed every adapter from its tasks' samples (again whenever the store changes).

        Built into locals and published as one tuple, so a concurrent `route` sees either the old
        or the new adapters, never a mix; a failed build leaves the old one and is retried.
        """
        store, task_to_adapter, samples_per_adapter = self.store, self.task_to_adapter, self.samples_per_adapter
        version = store.version
        tasks = [r.task for r in store.tasks()]
        t2a = dict(task_to_adapter) if task_to_adapter is not None else {t: t for t in tasks}
        # An adapter is embedded from samples of the task(s) it was trained on: for a manifest
        # that lists several tasks per adapter we pool their first samples.
        by_adapter: dict[str, list[str]] = {}
        for t in tasks:
            if t in t2a and t2a[t] == t:  # the adapter's own task
                by_adapter.setdefault(t2a[t], []).append(t)
        for t in tasks:
            a = t2a.get(t)
            if a is not None and a not in by_adapter:
                by_adapter.setdefault(a, []).append(t)
        samples = store.examples(sorted({t for ts in by_adapter.values() for t in ts}), limit=samples_per_adapter)
        adapters = sorted(a for a, ts in by_adapter.items() if any(t in samples for t in ts))
        matrix = l2_normalise(np.stack([
            np.concatenate([samples[t] for t in by_adapter[a] if t in samples]).mean(0) for a in adapters
        ])) if adapters else np.zeros((0, store.encoder.dim), dtype=np.float32)
        self._index = (version, adapters, {a: by_adapter[a] for a in adapters}, matrix)

    @property
    def adapters(self) -> list[str]:
        """The adapters the router can pick (as of its last build)."""
        return self._index[1]

    def _route_batch(self, texts, *, exclude, known):
        if self.store.version != self._index[0]:  # tasks added or removed since: re-embed the adapters
            self._build()
        _, adapter_list, adapter_tasks, matrix = self._index  # one consistent snapshot
        sw = Stopwatch(len(texts))
        q = self.store.encode(texts)
        sw.lap("encode")
        allowed = np.array([not set(adapter_tasks[a]) <= exclude for a in adapter_list], dtype=bool)
        sims = q @ matrix.T
        sims[:, ~allowed] = -np.inf
        sw.lap("query")
        out = []
        k = min(self.k, int(allowed.sum()))
        for row in sims:
            top = np.argsort(-row, kind="stable")[:k]
            adapters = [adapter_list[i] for i in top]
            tasks = [next(t for t in adapter_tasks[a] if t not in exclude) for a in adapters]
            out.append((tasks, [float(row[i]) for i in top], adapters))
        sw.lap("weights")
        timings = sw.result()
        return [Route(strategy=self.strategy, tasks=t, similarities=s, adapters=a,
                      weights=[1.0 / len(a)] * len(a), fallback=not a, fallback_reason=empty_reason(t, a),
                      timings_ms=timings) for t, s, a in out]
