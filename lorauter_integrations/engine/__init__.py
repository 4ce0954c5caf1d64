"""Engines: route a prompt, then generate with its adapters.

- `protocol`: the `Engine` interface and the `Generation` / `StreamChunk` values;
- `local`: `RoutedModel`, a local Hugging Face model with per-row adapters;
- `decoding`: its continuous-batching decode loop; `prompts`: chat templates and tokens;
  `params`: generation options; `models`: loading base models;
- `vllm`: `VLLMEngine`, generation on a vLLM server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .protocol import Engine, Generation, PromptLike, StreamChunk

_LAZY = {"RoutedModel": ".local", "VLLMEngine": ".vllm"}  # torch / httpx load on first use

if TYPE_CHECKING:
    from .local import RoutedModel
    from .vllm import VLLMEngine


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Engine", "Generation", "PromptLike", "RoutedModel", "StreamChunk", "VLLMEngine"]
