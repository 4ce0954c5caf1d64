"""`Route`: the one value every layer passes and shows."""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidInputError


#: Why a route fell back (`Route.fallback_reason`).
FallbackReason = Literal["no_match", "no_adapter", "below_floor", "below_floor_damped", "base_requested"]


def empty_reason(tasks: list[str], adapters: list[str]) -> FallbackReason | None:
    """The fallback reason of a route that matched ``tasks`` and composes ``adapters``."""
    if not tasks:
        return "no_match"
    if not adapters:
        return "no_adapter"
    return None


class Route(BaseModel):
    """Which adapters to activate for one request, with how much weight, and why.

    A plain, serialisable value (``route.model_dump()`` / ``route.model_dump_json()``): it is
    what callbacks, response metadata and ``lorauter route --json`` show.

    >>> Route(strategy="oracle", tasks=["sst2"], similarities=[1.0], adapters=["sst2"], weights=[1.0])
    Route(strategy='oracle', tasks=['sst2'], ...)
    """

    model_config = ConfigDict(frozen=True)

    strategy: str = Field(description="Router that made the decision (lorauter, retriever, ...).")
    tasks: list[str] = Field(default_factory=list, description="Matched tasks, best first.")
    similarities: list[float] = Field(
        default_factory=list, description="Score of each matched task (cosine or strategy score)."
    )
    adapters: list[str] = Field(default_factory=list, description="Adapters to compose.")
    weights: list[float] = Field(
        default_factory=list, description="Weight of each adapter; non-negative, sum 1."
    )
    fallback: bool = Field(
        default=False,
        description="True when the route fell back: the base model answers alone, or (below_floor_damped) "
                    "a mixture at reduced strength whose weights sum to the damping, the rest being the base model.",
    )
    fallback_reason: FallbackReason | None = Field(
        default=None,
        description="Why the route fell back: 'no_match' (no indexed task to match), 'no_adapter' (the matched "
                    "tasks have no adapter in the pool), 'below_floor' (the best task's similarity is under "
                    "the floor: base model), 'below_floor_damped' (under the floor: damped mixture), "
                    "'base_requested' (the base strategy, or an override naming no adapter).",
    )
    truncated: bool = Field(
        default=False, description="True when the routing text was cut to the model context."
    )
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Milliseconds spent per stage (encode, query, weights)."
    )

    def __init__(self, **data: Any) -> None:
        # A malformed Route is the caller's mistake: a typed error, not pydantic's ValidationError.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise InvalidInputError(f"invalid Route{f' {where}' if where else ''}: {first.get('msg', exc)}") from None

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_are_numbers(cls, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"weights must be a list of numbers, got {value!r}")
        value = list(value)
        for w in value:
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or type(w).__name__ == "bool_":
                raise ValueError(f"weights must be numbers (not strings, booleans or None), got {w!r}")
            if not math.isfinite(float(w)) or float(w) < 0:
                raise ValueError(f"weights must be finite and non-negative, got {w!r}")
        return [float(w) for w in value]

    @model_validator(mode="after")
    def _one_weight_per_adapter(self) -> "Route":
        if len(self.weights) != len(self.adapters):
            raise ValueError(f"{len(self.adapters)} adapters but {len(self.weights)} weights: one weight per adapter")
        return self

    @model_validator(mode="after")
    def _reason_means_fallback(self) -> "Route":
        if self.fallback_reason is not None and not self.fallback:
            raise ValueError(f"fallback_reason={self.fallback_reason!r} on a route that did not fall back")
        if self.fallback_reason == "below_floor_damped" and sum(self.weights) > 1.0 + 1e-4:
            raise ValueError("a damped fallback's weights sum to its damping (at most 1)")
        return self

    @property
    def is_damped(self) -> bool:
        """True for a damped fallback: adapters at reduced strength (weights sum below 1)."""
        return self.fallback_reason == "below_floor_damped" and bool(self.adapters)

    @property
    def is_base(self) -> bool:
        """True when no adapter is to be activated."""
        return not self.adapters

    def key(self, ndigits: int = 6) -> tuple[tuple[str, float], ...]:
        """A hashable identity of the composition (adapters and rounded weights, sorted)."""
        return tuple(sorted((a, round(w, ndigits)) for a, w in zip(self.adapters, self.weights)))

    def __repr_args__(self):  # keep reprs short in logs
        for name in ("strategy", "tasks", "adapters", "weights", "fallback"):
            yield name, getattr(self, name)
        if self.fallback_reason:
            yield "fallback_reason", self.fallback_reason
