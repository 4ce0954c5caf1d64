"""`EngineBase`: what every engine does the same way, routing and counting prompt tokens.

An engine sets ``routers`` (a `RouterSet`) and ``prompts`` (a `PromptRenderer`, possibly a
property that builds it lazily); generation is its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from ..route import Route
from .prompts import routing_text
from .protocol import PromptLike


class EngineBase:
    """Routing and token counting shared by `RoutedModel` and `VLLMEngine`."""

    routers: Any
    prompts: Any

    @property
    def strategy(self) -> str:
        """The default routing strategy."""
        return self.routers.strategy

    def count_tokens(self, prompt: PromptLike) -> int:
        """Tokens of ``prompt`` as the model is fed it (a chat through its chat template)."""
        return len(self.prompts.token_ids(prompt))

    def route(self, text: str, *, strategy: str | None = None, exclude_tasks: Collection[str] = ()) -> Route:
        """Decide the adapters for ``text`` with the default (or the named) routing strategy."""
        return self.routers.route(text, strategy=strategy, exclude_tasks=exclude_tasks)

    def route_many(self, texts: Sequence[str], *, strategy: str | None = None) -> list[Route]:
        """Route several texts at once (one batched encode and store query when the router can)."""
        return self.routers.route_many(texts, strategy=strategy)

    def route_from_override(self, adapters: list[str], weights: list[float] | None = None) -> Route:
        """A caller-chosen route, validated against the pool (weights default to uniform)."""
        return self.routers.override(adapters, weights)

    def routing_text(self, prompt: PromptLike) -> str:
        """The text a prompt is routed on: the string itself, or a chat's last user message."""
        return routing_text(prompt)


__all__ = ["EngineBase"]
