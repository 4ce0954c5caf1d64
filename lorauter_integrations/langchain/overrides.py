"""Per-call routing overrides, read from the runnable config metadata.

Every LangChain call accepts ``config={"metadata": {"lorauter": {...}}}``; the metadata reaches the
model's run manager (``run_manager.metadata``), where the model reads it. This module validates
that value and turns it into a `Route` through the engine, so the LangChain classes and the
callback handler hold no routing logic of their own.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidInputError
from ..routing.route import Route

METADATA_KEY = "lorauter"


class RoutingOverride(BaseModel):
    """What a caller may fix for one call, under ``metadata["lorauter"]``.

    >>> model.invoke("Translate to German: good morning",
    ...              config={"metadata": {"lorauter": {"adapters": ["wmt16_translate_deen"]}}})
    >>> model.invoke("hi", config={"metadata": {"lorauter": {"strategy": "base"}}})
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapters: list[str] | None = Field(default=None, description="Adapters to compose, skipping the router.")
    weights: list[float] | None = Field(default=None, description="Their weights (default: uniform).")
    strategy: str | None = Field(default=None, description="Routing strategy for this call (e.g. base).")
    exclude_tasks: list[str] = Field(default_factory=list, description="Tasks the router may not pick.")

    @model_validator(mode="after")
    def _adapters_xor_strategy(self) -> "RoutingOverride":
        if self.adapters is not None and (self.strategy is not None or self.exclude_tasks):
            raise ValueError("give either 'adapters' (a fixed route) or 'strategy'/'exclude_tasks', not both")
        if self.weights is not None and self.adapters is None:
            raise ValueError("'weights' needs 'adapters'")
        return self


def override_from_metadata(metadata: Mapping[str, Any] | None) -> RoutingOverride | Route | None:
    """The override in a run's metadata: a `RoutingOverride`, a ready `Route`, or None."""
    value = (metadata or {}).get(METADATA_KEY)
    if value is None or isinstance(value, (Route, RoutingOverride)):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"metadata['{METADATA_KEY}'] must be a dict like {{'adapters': [...], 'weights': [...]}} "
            f"or {{'strategy': 'base'}}, got {type(value).__name__}"
        )
    try:
        return RoutingOverride.model_validate(dict(value))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
        raise InvalidInputError(
            f"bad metadata['{METADATA_KEY}'] ({problems}); allowed keys: adapters, weights, strategy, exclude_tasks"
        ) from None


def resolve_route(
    engine,
    text: str,
    override: RoutingOverride | Route | None = None,
    *,
    strategy: str | None = None,
) -> Route:
    """The route of one call: the override when given, else the engine's router on ``text``.

    Args:
        engine: A `RoutedModel`.
        text: The routing text chosen by the framework layer.
        override: From :func:`override_from_metadata`.
        strategy: The model's default strategy (None: the engine's default).
    """
    if isinstance(override, Route):
        return override
    if override is not None and override.adapters is not None:
        return engine.route_from_override(override.adapters, override.weights)
    if override is not None:
        return engine.route(text, strategy=override.strategy or strategy, exclude_tasks=override.exclude_tasks)
    return engine.route(text, strategy=strategy)
