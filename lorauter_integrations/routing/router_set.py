"""`RouterSet`: the routers of one engine, by strategy, built lazily and kept in step with its pool."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

from ..errors import InvalidInputError
from ..route import Route


class RouterSet:
    """Routes texts for an engine: one router per strategy, built from the task store on first
    use and rebuilt when the pool's task -> adapter map changes (adapters registered or removed).

    Args:
        store: The `TaskStore` routers query (None: only ``base`` and overrides route).
        pool: The `AdapterPool` (its ``task_to_adapter``, ``ids`` and ``version``).
        strategy: The default strategy.
        router: A ready router used for the default strategy instead of building one.
        config: Router settings (k, tau, floor, ...), validated by `build_router`.
    """

    def __init__(self, store: Any, pool: Any, *, strategy: str = "lorauter", router: Any = None,
                 config: dict | None = None) -> None:
        self.store, self.pool = store, pool
        self.strategy: str = getattr(router, "strategy", None) or strategy
        self.config = dict(config or {})
        self._user_router = router
        self._routers: dict[str, Any] = {}
        self._version = pool.version
        self._lock = threading.Lock()
        from . import router_settings

        known = set().union(*router_settings().values())
        unknown = sorted(set(self.config) - known)
        if unknown:  # a typo is refused when the engine is built, not at its first call
            raise InvalidInputError(f"unknown router setting(s) {unknown}; known: {', '.join(sorted(known))}")

    def get(self, strategy: str | None = None):
        """The router of ``strategy`` (default: this set's)."""
        strategy = strategy or self.strategy
        if self._user_router is not None and strategy == self.strategy:
            return self._user_router
        with self._lock:
            if self._version != self.pool.version:  # adapters changed: rebuild task maps
                self._routers.clear()
                self._version = self.pool.version
            router = self._routers.get(strategy)
            if router is None:
                from . import build_router

                if self.store is None and strategy != "base":
                    raise InvalidInputError(
                        f"no router for strategy '{strategy}': pass router= or store= to the engine, "
                        "or give explicit routes"
                    )
                router = self._routers[strategy] = build_router(
                    strategy, self.store, self.pool.task_to_adapter, **self.config
                )
            return router

    def route(self, text: str, *, strategy: str | None = None, exclude_tasks: Collection[str] = ()) -> Route:
        """Decide the adapters for ``text``."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("cannot route an empty prompt: give some text")
        return self.get(strategy).route(text, exclude_tasks=exclude_tasks)

    def route_many(self, texts: Sequence[str], *, strategy: str | None = None) -> list[Route]:
        """Route several texts (one batched encode and store query when the router can)."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError("cannot route an empty prompt: give some text")
        router = self.get(strategy)
        if hasattr(router, "route_many"):
            return list(router.route_many(list(texts)))
        return [router.route(t) for t in texts]

    def override(self, adapters: list[str], weights: list[float] | None = None) -> Route:
        """A caller-chosen route, validated against the pool (weights default to uniform)."""
        from .simple import override_route

        return override_route(adapters, weights, known_adapters=self.pool.ids)
