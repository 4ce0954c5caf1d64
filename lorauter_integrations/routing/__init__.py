"""Routing strategies behind one interface (`Router.route(text) -> Route`)."""

from __future__ import annotations

from typing import Mapping

from ..errors import InvalidInputError
from .base import Router, merge_by_adapter, softmax
from .examples import ExamplesRouter
from .lorauter import LoRAuterRouter
from .retriever import RetrieverRouter
from .route import Route
from .simple import BaseModelRouter, OracleRouter, UniformRouter, override_route

#: strategy name -> (router class, fixed keyword arguments)
STRATEGIES: dict[str, tuple[type[Router], dict]] = {
    "lorauter": (LoRAuterRouter, {"representation": "hybrid"}),
    "lorauter-paper": (LoRAuterRouter, {"representation": "paper"}),
    "retriever": (RetrieverRouter, {}),
    "examples": (ExamplesRouter, {}),
    "uniform": (UniformRouter, {}),
    "oracle": (OracleRouter, {}),
    "base": (BaseModelRouter, {}),
}


def build_router(strategy: str, store, task_to_adapter: Mapping[str, str] | None = None, **cfg) -> Router:
    """Build a router by strategy name; ``cfg`` passes knobs (k, tau, floor, top_p, n...).

    Knobs a strategy does not have are ignored, so one config can serve every strategy.
    """
    try:
        cls, fixed = STRATEGIES[strategy]
    except KeyError:
        raise InvalidInputError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}") from None
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in cfg.items() if k in accepted and v is not None}
    return cls(store, task_to_adapter, **fixed, **kwargs)


__all__ = [
    "STRATEGIES", "BaseModelRouter", "ExamplesRouter", "LoRAuterRouter", "OracleRouter", "RetrieverRouter",
    "Route", "Router", "UniformRouter", "build_router", "merge_by_adapter", "override_route", "softmax",
]
