"""The engine, pool and task store a project's `Settings` describe (CLI and Python share these)."""

from __future__ import annotations

from typing import Any

from .settings import Settings, load_settings


def open_pool(settings: Settings):
    """The adapter pool of ``settings.pool``, or the bundled demo pool."""
    from .adapters.pool import AdapterPool
    from .demo import demo_pool

    return AdapterPool.from_dir(settings.pool) if settings.pool else demo_pool()


def open_store(settings: Settings):
    """The task store: a ``chroma run`` server, a folder, or (neither set) a private copy of the demo
    store (indexed once from the bundled Flan validation sets, the store `RoutedModel.demo()` uses)."""
    from .demo import demo_store
    from .errors import InvalidInputError
    from .store import TaskStore, make_client

    if settings.server:
        host, _, port = settings.server.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(f"server takes HOST:PORT, e.g. 127.0.0.1:8000, got {settings.server!r}")
        return TaskStore(client=make_client(host=host, port=int(port)))
    if settings.store:
        return TaskStore(settings.store)
    return demo_store()


def build_router(settings: Settings, store: Any = None, pool: Any = None):
    """The router of ``settings`` over the pool's task -> adapter map (no model is loaded)."""
    from .routing import build_router as build

    store = store if store is not None else open_store(settings)
    pool = pool if pool is not None else open_pool(settings)
    return build(settings.strategy, store, pool.task_to_adapter, **settings.router_config())


def build_engine(settings: Settings | None = None, **overrides: Any):
    """A `RoutedModel` of the project's settings (``load_settings(**overrides)`` when None).

    >>> engine = build_engine()                      # lorauter.toml / LORAUTER_* / the demo
    >>> engine = build_engine(model="demo", k=2)     # explicit values win
    """
    from .engine import RoutedModel

    settings = settings or load_settings(**overrides)
    return RoutedModel(settings.model, pool=open_pool(settings), store=open_store(settings),
                       strategy=settings.strategy, router_config=settings.router_config())


__all__ = ["build_engine", "build_router", "open_pool", "open_store"]
