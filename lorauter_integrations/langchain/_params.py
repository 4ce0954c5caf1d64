"""Fields and helpers shared by `ChatLoRAuter` and `LoRAuterLLM` (one definition, two models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine import RoutedModel


class RoutedModelParams(BaseModel):
    """The engine and the generation options both LangChain models expose.

    Mixed in before LangChain's base class (``class ChatLoRAuter(RoutedModelParams, BaseChatModel)``),
    so the fields are ordinary constructor arguments of either model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    engine: RoutedModel = Field(exclude=True, repr=False)
    """The routed local model (``RoutedModel.demo()`` for the bundled one)."""
    model_name: str | None = Field(default=None, alias="model")
    """Name shown in metadata and traces (default: the engine's base model id)."""
    max_tokens: int = 256
    """Maximum number of tokens to generate."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int | None = None
    """Sampling seed, for reproducible sampled outputs."""
    stop: list[str] | None = None
    """Stop sequences applied to every call (merged with the call's own)."""
    strategy: str | None = None
    """Routing strategy (None: the engine's default, ``lorauter``)."""

    @model_validator(mode="after")
    def _default_model_name(self) -> "RoutedModelParams":
        if self.model_name is None:
            self.model_name = str(getattr(self.engine, "model_name", "") or "lorauter")
        return self

    def _params_identity(self) -> dict[str, Any]:
        """The options that identify the model in traces and caches."""
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "strategy": self.strategy or getattr(self.engine, "strategy", None),
        }

    def _generation_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`RoutedModel.generate` options: the call's kwargs over the model's fields, stops merged."""
        stops = list(dict.fromkeys([*(self.stop or []), *(stop or [])]))
        return {
            "max_new_tokens": int(kwargs.get("max_tokens", self.max_tokens)),
            "temperature": float(kwargs.get("temperature", self.temperature)),
            "top_p": float(kwargs.get("top_p", self.top_p)),
            "stop": stops or None,
            "seed": kwargs.get("seed", self.seed),
        }
