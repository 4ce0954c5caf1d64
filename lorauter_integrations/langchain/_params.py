"""What `ChatLoRAuter` and `LoRAuterLLM` share: the engine, generation fields, per-call overrides,
token counting and batching (one definition, two models)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..calls import METADATA_KEY, generation_options
from ..engine.protocol import Engine
from ..errors import InvalidInputError


# The override of the call being made, for `_params_identity`: LangChain keys its LLM cache by the
# model's identifying params (completion models) or by the call's keywords (chat models).
_CALL_OVERRIDE: ContextVar[Any] = ContextVar("lorauter_call_override", default=None)


class RoutedModelParams(BaseModel):
    """The engine and the generation options both LangChain models expose.

    Mixed in before LangChain's base class (``class ChatLoRAuter(RoutedModelParams, BaseChatModel)``),
    so the fields are ordinary constructor arguments of either model.

    Per-call overrides: ``config={"metadata": {"lorauter": {...}}}`` (any runnable, also inside a
    chain) or the keyword ``lorauter={...}`` of ``invoke``/``stream``/``batch``. In ``batch`` /
    ``abatch`` each input is its own call with its own config's override; the calls run
    concurrently and join the engine's running batch. The override is part of the LLM cache key,
    so a cached answer is never served for another route.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    engine: Any = Field(exclude=True, repr=False)
    """The `Engine` that routes and generates (``RoutedModel.demo()``, a `VLLMEngine`, ...)."""
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

    @field_validator("engine")
    @classmethod
    def _is_engine(cls, engine: Any) -> Any:
        if not isinstance(engine, Engine):
            raise ValueError(f"engine must implement lorauter_integrations.Engine (RoutedModel, VLLMEngine), "
                             f"got {type(engine).__name__}")
        return engine

    @model_validator(mode="after")
    def _default_model_name(self) -> "RoutedModelParams":
        if self.model_name is None:
            self.model_name = str(getattr(self.engine, "model_name", "") or "lorauter")
        return self

    def _params_identity(self) -> dict[str, Any]:
        """The options that identify the model in traces and caches (with the call's override)."""
        params = {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "strategy": self.strategy or getattr(self.engine, "strategy", None),
        }
        override = _CALL_OVERRIDE.get()
        if override is not None:
            params[METADATA_KEY] = override
        return params

    @contextmanager
    def _call_scope(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Around one call: its override is part of the model's identity (so of the cache key)."""
        kwargs = self._with_override(config, kwargs)
        token = _CALL_OVERRIDE.set(kwargs.get(METADATA_KEY))
        try:
            yield kwargs
        finally:
            _CALL_OVERRIDE.reset(token)

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine options: the call's kwargs over the model's fields, stops merged."""
        defaults = {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                    "seed": self.seed, "stop": self.stop}
        return generation_options(defaults, kwargs, stop)

    @staticmethod
    def _override(run_manager: Any, kwargs: dict[str, Any]) -> Any:
        """The call's override: the ``lorauter`` keyword, else the run's metadata."""
        if kwargs.get(METADATA_KEY) is not None:
            return kwargs[METADATA_KEY]
        return (getattr(run_manager, "metadata", None) or {}).get(METADATA_KEY)

    @staticmethod
    def _with_override(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Carry the config's override as a keyword: LangChain keys its LLM cache by keywords."""
        value = ((config or {}).get("metadata") or {}).get(METADATA_KEY)
        if value is not None and kwargs.get(METADATA_KEY) is None:
            return {**kwargs, METADATA_KEY: value.model_dump() if isinstance(value, BaseModel) else value}
        return kwargs

    def _concurrent(self, config: RunnableConfig | Sequence[RunnableConfig] | None, n: int) -> list[RunnableConfig]:
        """Per-input configs with a default concurrency that fills the engine's batch."""
        limit = min(n, int(getattr(self.engine, "max_batch_size", 16))) or 1
        return [{**c, "max_concurrency": c.get("max_concurrency") or limit} for c in get_config_list(config, n)]

    # -- token counting with the engine's tokenizer (LangChain's default downloads GPT-2's)
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the base model's tokenizer."""
        if not isinstance(text, str):
            raise InvalidInputError(f"get_token_ids takes a string, got {type(text).__name__}")
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` under the base model's tokenizer."""
        return len(self.get_token_ids(text))
