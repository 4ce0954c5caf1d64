"""lorauter-integrations: route every LangChain / LlamaIndex LLM call to the right LoRA adapters.

>>> from lorauter_integrations import RoutedModel, Route
>>> engine = RoutedModel.demo()
>>> out = engine.generate(["Translate to English: Guten Morgen!"])[0]
>>> out.text, out.route.adapters, out.route.weights

Heavy modules (torch, transformers, chromadb) load on first use of a name, not on import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .routing.route import Route

__version__ = "0.1.0"

_LAZY = {
    "RoutedModel": ".engine",
    "Generation": ".engine",
    "StreamChunk": ".engine",
    "AdapterPool": ".pool",
    "TaskStore": ".store",
    "SentenceEncoder": ".encoders",
    "build_router": ".routing",
}

if TYPE_CHECKING:
    from .encoders import SentenceEncoder
    from .engine import Generation, RoutedModel, StreamChunk
    from .pool import AdapterPool
    from .routing import build_router
    from .store import TaskStore


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'lorauter_integrations' has no attribute {name!r}")


__all__ = ["AdapterPool", "Generation", "Route", "RoutedModel", "SentenceEncoder", "StreamChunk",
           "TaskStore", "build_router", "__version__"]
