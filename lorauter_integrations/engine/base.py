"""`EngineBase`: what every engine does the same way, routing and counting prompt tokens.

An engine sets ``routers`` (a `RouterSet`) and ``prompts`` (a `PromptRenderer`, possibly a
property that builds it lazily); generation is its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from ..errors import InvalidInputError
from ..route import Route
from .params import GenerationParams
from .prompts import routing_text
from .protocol import PromptLike


class EngineBase:
    """Routing and token counting shared by `RoutedModel` and `VLLMEngine`."""

    routers: Any
    prompts: Any
    context_window: int

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


    def _prepare(self, prompts, routes, options: dict[str, Any]):
        """Validate options and prompts, route those without a route, check caller-built routes
        (errors before any work): ``(params, [(text, templated)], routes, prompt token budget)``."""
        if isinstance(prompts, (str, dict)):
            raise InvalidInputError("generate() takes a list of prompts; use [prompt] for one")
        prompts = list(prompts)
        if routes is not None and len(routes) != len(prompts):
            raise InvalidInputError(f"{len(prompts)} prompts but {len(routes)} routes")
        params = GenerationParams.of(**options)
        rendered = [self.prompts.render(p) for p in prompts]  # refuse a malformed prompt before routing
        routes = list(routes) if routes is not None else [None] * len(prompts)
        todo = [i for i, r in enumerate(routes) if r is None]
        if todo:
            for i, r in zip(todo, self.route_many([routing_text(prompts[i]) for i in todo])):
                routes[i] = r
        budget = self.context_window - params.max_new_tokens
        if budget < 1:
            raise InvalidInputError(
                f"max_new_tokens={params.max_new_tokens} leaves no room for the prompt in the "
                f"{self.context_window}-token context: ask for fewer tokens"
            )
        for route in routes:
            if route.is_damped:  # ids known; the weights sum to the damping (Route checked <= 1)
                total = sum(route.weights)
                self.route_from_override(route.adapters, [w / total for w in route.weights] if total else None)
            elif route.adapters:  # a caller-built Route gets an override's checks (ids, sum 1)
                self.route_from_override(route.adapters, route.weights)
        return params, rendered, routes, budget


__all__ = ["EngineBase"]
