"""`Route`: the one value every layer passes and shows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
