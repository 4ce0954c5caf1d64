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

from .route import Route

__version__ = "0.1.0"

_LAZY = {
    "Engine": ".engine.protocol",
    "Generation": ".engine.protocol",
    "StreamChunk": ".engine.protocol",
    "RoutedModel": ".engine.local",
    "VLLMEngine": ".engine.vllm",
    "AdapterPool": ".adapters.pool",
    "TaskStore": ".store",
    "SentenceEncoder": ".encoders",
    "build_router": ".routing",
}

if TYPE_CHECKING:
    from .encoders import SentenceEncoder
    from .engine.local import RoutedModel
    from .engine.protocol import Engine, Generation, StreamChunk
    from .engine.vllm import VLLMEngine
    from .adapters.pool import AdapterPool
    from .routing import build_router
    from .store import TaskStore


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'lorauter_integrations' has no attribute {name!r}")


__all__ = ["AdapterPool", "Engine", "Generation", "Route", "RoutedModel", "SentenceEncoder", "StreamChunk",
           "TaskStore", "VLLMEngine", "build_router", "__version__"]
