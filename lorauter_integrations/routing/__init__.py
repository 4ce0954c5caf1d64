"""Routing strategies behind one interface (`Router.route(text) -> Route`)."""

from __future__ import annotations

from typing import Mapping

from ..errors import InvalidInputError
from ..route import Route
from .base import Router, merge_by_adapter, softmax
from ..floor import parse_floor
from .examples import ExamplesRouter
from .lorauter import LoRAuterRouter
from .retriever import RetrieverRouter
from .router_set import RouterSet
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


def router_settings() -> dict[str, set[str]]:
    """The settings each strategy accepts (``k``, ``tau``, ``floor``, ``top_p``, ``n``...)."""
    import inspect

    out = {}
    for name, (cls, fixed) in STRATEGIES.items():
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "store", "task_to_adapter"}
        out[name] = params - set(fixed)
    return out


def build_router(strategy: str, store, task_to_adapter: Mapping[str, str] | None = None, **cfg) -> Router:
    """Build a router by strategy name; ``cfg`` passes settings (k, tau, floor, top_p, n...).

    ``floor``: ``"auto"`` (the default: the floor recorded in the store), None / ``"none"`` /
    ``"off"`` (no floor) or a number.

    One configuration serves every strategy: a setting that some strategy accepts is passed to
    the strategies that have it; a setting no strategy has is refused (a typo must not be
    silently ignored).
    """
    try:
        cls, fixed = STRATEGIES[strategy]
    except KeyError:
        raise InvalidInputError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}") from None
    settings = router_settings()
    known = set().union(*settings.values())
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise InvalidInputError(f"unknown router setting(s) {unknown}; known: {', '.join(sorted(known))}")
    if "floor" in cfg:  # "auto", None / "none" / "off", or a number; refused otherwise, whatever the strategy
        cfg = {**cfg, "floor": parse_floor(cfg["floor"])}
    # None means "the default", except for floor, where None is "no floor" (the default is "auto")
    kwargs = {k: v for k, v in cfg.items() if k in settings[strategy] and (v is not None or k == "floor")}
    return cls(store, task_to_adapter, **fixed, **kwargs)


__all__ = [
    "STRATEGIES", "BaseModelRouter", "ExamplesRouter", "LoRAuterRouter", "OracleRouter", "RetrieverRouter",
    "Route", "Router", "RouterSet", "UniformRouter", "build_router", "router_settings", "merge_by_adapter", "override_route", "softmax",
]
