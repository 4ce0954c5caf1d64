"""Reference strategies: ``uniform`` (every adapter equal), ``oracle`` (the query's known task),
``base`` (no adapter), and user overrides (explicit adapters and weights)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from ..errors import InvalidInputError, UnknownAdapterError
from .base import Router, merge_by_adapter
from ..route import Route, empty_reason

if TYPE_CHECKING:
    from ..store import TaskStore


def _adapters_of(store: TaskStore, task_to_adapter: Mapping[str, str] | None) -> list[str]:
    tasks = [r.task for r in store.tasks()]
    if task_to_adapter is None:
        return tasks
    return sorted({task_to_adapter[t] for t in tasks if t in task_to_adapter})


class UniformRouter(Router):
    """Every adapter of the pool with the same weight (the composition baseline)."""

    strategy = "uniform"

    def __init__(self, store: TaskStore, task_to_adapter: Mapping[str, str] | None = None):
        self.store, self.task_to_adapter = store, task_to_adapter
        self._index = (store.version, _adapters_of(store, task_to_adapter))

    @property
    def adapters(self) -> list[str]:
        return self._index[1]

    def _route_batch(self, texts, *, exclude, known):
        if self.store.version != self._index[0]:  # tasks added or removed since (published as one tuple)
            version = self.store.version
            self._index = (version, _adapters_of(self.store, self.task_to_adapter))
        adapters = self._index[1]
        w = [1.0 / len(adapters)] * len(adapters) if adapters else []
        return [Route(strategy=self.strategy, adapters=list(adapters), weights=w, fallback=not adapters,
                      fallback_reason=None if adapters else "no_adapter") for _ in texts]


class OracleRouter(Router):
    """The adapter of the query's known task (evaluation upper bound for single-task routing)."""

    strategy = "oracle"

    def __init__(self, store: TaskStore | None = None, task_to_adapter: Mapping[str, str] | None = None):
        self.task_to_adapter = task_to_adapter

    def _route_batch(self, texts, *, exclude, known):
        routes = []
        for task in known:
            if task is None:
                raise InvalidInputError("the oracle strategy needs the query's task (known_task=...)")
            adapters, weights = merge_by_adapter([task], [1.0], self.task_to_adapter)
            routes.append(Route(strategy=self.strategy, tasks=[task], similarities=[1.0],
                                adapters=adapters, weights=weights, fallback=not adapters,
                                fallback_reason=empty_reason([task], adapters)))
        return routes


class BaseModelRouter(Router):
    """No adapter: the base model answers."""

    strategy = "base"

    def __init__(self, store: TaskStore | None = None, task_to_adapter: Mapping[str, str] | None = None):
        pass

    def _route_batch(self, texts, *, exclude, known):
        return [Route(strategy=self.strategy, fallback=True, fallback_reason="base_requested") for _ in texts]


def override_route(
    adapters: Sequence[str],
    weights: Sequence[float] | None = None,
    *,
    known_adapters: Sequence[str] | None = None,
    tolerance: float = 1e-4,
) -> Route:
    """A `Route` the caller chose: validated adapters and weights (uniform when omitted).

    Weights must be finite, non-negative and sum to 1 (within ``tolerance``); ids must be known.
    """
    if isinstance(adapters, (str, bytes)) or not hasattr(adapters, "__iter__"):
        raise InvalidInputError(
            f"adapters must be a list of adapter ids, got {adapters!r}"
            + (f" (for one adapter write [{adapters!r}])" if isinstance(adapters, str) else "")
        )
    adapters = list(adapters)
    bad = [a for a in adapters if not isinstance(a, str) or not a]
    if bad:
        raise InvalidInputError(f"adapter ids must be non-empty strings, got {bad[:5]}")
    if not adapters:
        if weights:
            raise InvalidInputError("weights were given without adapters")
        return Route(strategy="override", fallback=True, fallback_reason="base_requested")
    if len(set(adapters)) != len(adapters):
        raise InvalidInputError(f"adapter ids repeat in the override: {adapters}")
    if known_adapters is not None:
        known = set(known_adapters)
        missing = [a for a in adapters if a not in known]
        if missing:
            raise UnknownAdapterError(f"unknown adapter id(s) {missing}; known: {sorted(known)}")
    if weights is None:
        weights = [1.0 / len(adapters)] * len(adapters)
    # Route checks the weights themselves (numbers, finite, non-negative, one per adapter).
    route = Route(strategy="override", adapters=adapters, weights=weights, fallback=False)
    if abs(sum(route.weights) - 1.0) > tolerance:
        raise InvalidInputError(f"weights must sum to 1, got {sum(route.weights):.6f}")
    return route
