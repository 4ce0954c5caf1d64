"""The router interface and the small functions every strategy shares."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Collection, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..route import Route


def softmax(scores: Sequence[float], tau: float) -> list[float]:
    """``softmax(s / tau)``, computed stably. LoRAuter weights its top-K tasks this way."""
    if tau <= 0:
        raise InvalidInputError(f"tau must be > 0, got {tau}")
    s = np.asarray(scores, dtype=np.float64) / tau
    if s.size == 0:
        return []
    e = np.exp(s - s.max())
    return (e / e.sum()).tolist()


def merge_by_adapter(
    tasks: Sequence[str], weights: Sequence[float], task_to_adapter: Mapping[str, str] | None
) -> tuple[list[str], list[float]]:
    """Map tasks to adapters and add the weights of tasks that share an adapter.

    Order: by first appearance (so the best task's adapter comes first). Tasks with no adapter
    (absent from a non-empty map) are dropped and the remaining weights renormalised.
    """
    acc: dict[str, float] = {}
    for t, w in zip(tasks, weights):
        a = t if task_to_adapter is None else task_to_adapter.get(t)
        if a is None:
            continue
        acc[a] = acc.get(a, 0.0) + float(w)
    total = sum(acc.values())
    if total <= 0:
        return [], []
    return list(acc), [w / total for w in acc.values()]


def check_text(text: str) -> str:
    """A routable text: a non-empty string of valid Unicode (lone surrogates are refused)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"routing text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError("cannot route an empty prompt: give some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"the text to route holds a lone surrogate ({text[e.start:e.end]!r} at position {e.start}), which is not "
            "valid Unicode; it is refused: decode your input with errors='replace' or fix its source"
        ) from None
    return text


class Router(ABC):
    """Decides a `Route` for a text. Subclasses set ``strategy`` and implement ``_route_batch``.

    ``exclude_tasks`` removes tasks from the candidates (unseen-task evaluation);
    ``known_task`` is only read by the ``oracle`` strategy.
    """

    strategy: str = "abstract"

    def route(self, text: str, *, exclude_tasks: Collection[str] = (), known_task: str | None = None) -> Route:
        return self.route_many([text], exclude_tasks=[exclude_tasks], known_tasks=[known_task])[0]

    def route_many(
        self,
        texts: Sequence[str],
        *,
        exclude_tasks: Sequence[Collection[str]] | None = None,
        known_tasks: Sequence[str | None] | None = None,
    ) -> list[Route]:
        """Route several texts; equal exclusion sets are answered by one batched store query."""
        texts = [check_text(t) for t in texts]
        excl = [frozenset(e) for e in (exclude_tasks or [()] * len(texts))]
        known = list(known_tasks or [None] * len(texts))
        if len(excl) != len(texts) or len(known) != len(texts):
            raise InvalidInputError("exclude_tasks/known_tasks must have one entry per text")
        out: list[Route | None] = [None] * len(texts)
        groups: dict[frozenset, list[int]] = {}
        for i, e in enumerate(excl):
            groups.setdefault(e, []).append(i)
        for e, idx in groups.items():
            routes = self._route_batch([texts[i] for i in idx], exclude=e, known=[known[i] for i in idx])
            for i, r in zip(idx, routes):
                out[i] = r
        return out  # type: ignore[return-value]

    @abstractmethod
    def _route_batch(self, texts: list[str], *, exclude: frozenset, known: list[str | None]) -> list[Route]: ...


class Stopwatch:
    """Per-stage milliseconds for `Route.timings_ms` (shared across a batch: divided per item)."""

    def __init__(self, n_items: int = 1):
        self.n = max(1, n_items)
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000.0 / self.n
        self._t = now

    def result(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.ms.items()}
        out["total"] = round(sum(self.ms.values()), 3)
        return out
