"""The `Engine` protocol: what framework layers and the CLI rely on, whatever generates.

Two implementations: `RoutedModel` (a local Hugging Face model, per-row adapters, continuous
batching) and `VLLMEngine` (routes here, generates on a vLLM server). ``ChatLoRAuter(engine=...)``
and LlamaIndex ``LoRAuterLLM(engine=...)`` take either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any, Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel

from ..route import Route

PromptLike = Union[str, list[dict]]
"""A plain-text prompt, or a chat: a list of ``{"role", "content"}`` messages."""


class Generation(BaseModel):
    """One completed request: its text, the route it ran with, token usage, why it stopped."""

    text: str
    route: Route
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class StreamChunk(BaseModel):
    """A piece of streamed text; the last chunk carries ``finish_reason`` and token usage."""

    text: str
    route: Route
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Engine(Protocol):
    """Routes texts to adapters and generates with them.

    Generation options (keyword arguments of `generate` / `stream` and their async twins):
    ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``stop``, ``seed``; None means
    the engine's default.
    """

    model_name: str
    """The base model's id (shown in metadata and traces)."""
    context_window: int
    """Tokens the model attends to (prompt + generation)."""
    strategy: str
    """The default routing strategy."""

    @property
    def tokenizer(self) -> Any:
        """The base model's Hugging Face tokenizer."""

    def count_tokens(self, prompt: PromptLike) -> int:
        """Tokens of ``prompt`` as the model sees it (a chat through its chat template)."""

    def route(self, text: str, *, strategy: str | None = None, exclude_tasks: Collection[str] = ()) -> Route:
        """Decide the adapters for ``text``."""

    def route_many(self, texts: Sequence[str], *, strategy: str | None = None) -> list[Route]:
        """Route several texts at once."""

    def route_from_override(self, adapters: list[str], weights: list[float] | None = None) -> Route:
        """A caller-chosen route, validated against the engine's adapters."""

    def generate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                 **options: Any) -> list[Generation]:
        """Generate for every prompt, each with its own route (None: routed on its text)."""

    def stream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> Iterator[StreamChunk]:
        """Yield the text of one prompt as it is decoded; the last chunk carries usage."""

    async def agenerate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                        **options: Any) -> list[Generation]:
        """`generate` without blocking the event loop."""

    def astream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> AsyncIterator[StreamChunk]:
        """`stream` as an async iterator."""


__all__ = ["Engine", "Generation", "PromptLike", "StreamChunk"]
