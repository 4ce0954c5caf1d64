"""`Route`: the one value every layer passes and shows."""

from __future__ import annotations

import math
import numbers
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidInputError


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
        default=False, description="True when the base model is used (no task close enough)."
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
