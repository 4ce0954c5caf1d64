"""Callback handlers: see every run's route, or route a stock Hugging Face model.

- `LoRAuterCallbackHandler` records the `Route` of every LLM run of our models (run id, parent
  run, tags, tokens) for logs, traces and tests, with a readable summary.
- `RoutingCallbackHandler` makes a stock LangChain ``HuggingFacePipeline`` / ``ChatHuggingFace``
  routed: its model must be the engine's model; the handler routes each run when it starts,
  applies the composition to the model's weights, and restores them when the run ends or fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, Field

from ..errors import InvalidInputError
from ..route import Route
from ..calls import METADATA_KEY, parse_override, resolve_route, select_routing_text
from .chat_models import messages_to_chat


class RouteRecord(BaseModel):
    """The route of one finished LLM run."""

    run_id: UUID
    parent_run_id: UUID | None = None
    tags: list[str] = Field(default_factory=list)
    name: str | None = Field(default=None, description="The run's name (run_name or the model class).")
    route: Route
    model_name: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = Field(default=None, description="From run start to run end.")


class LoRAuterCallbackHandler(BaseCallbackHandler):
    """Collects the `Route` of every run of `ChatLoRAuter` / `LoRAuterLLM` (and of runs that a
    `RoutingCallbackHandler` routed).

    >>> handler = LoRAuterCallbackHandler()
    >>> chain.invoke(inputs, config={"callbacks": [handler]})
    >>> print(handler.summary())
    >>> handler.records[-1].route.adapters

    Args:
        logger: When given, each route is also logged at INFO, one line per run.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.records: list[RouteRecord] = []
        self.logger = logger
        self._started: dict[UUID, tuple[float, list[str], str | None]] = {}
        self._lock = threading.Lock()  # runs of a batch may end on several threads

    # -- LangChain hooks
    def on_chat_model_start(self, serialized, messages, *, run_id: UUID, tags=None, **kwargs: Any) -> None:
        self._start(run_id, tags, serialized, kwargs)

    def on_llm_start(self, serialized, prompts, *, run_id: UUID, tags=None, **kwargs: Any) -> None:
        self._start(run_id, tags, serialized, kwargs)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs) -> None:
        with self._lock:
            started, tags, name = self._started.pop(run_id, (None, [], None))
        route = route_of_result(response)
        if route is None:  # not a routed model's run
            return
        input_tokens, output_tokens, model_name = _usage_of_result(response)
        record = RouteRecord(
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=tags,
            name=name,
            route=route,
            model_name=model_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=None if started is None else (time.perf_counter() - started) * 1000,
        )
        with self._lock:
            self.records.append(record)
        if self.logger is not None:
            self.logger.info("lorauter route run=%s %s", run_id, _describe(route))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._started.pop(run_id, None)

    # -- reading
    @property
    def routes(self) -> list[Route]:
        """The routes, in the order the runs ended."""
        return [r.route for r in self.records]

    def summary(self) -> str:
        """A table: one line per run with its tags, strategy, adapters and weights, tasks, tokens."""
        if not self.records:
            return "no routed LLM runs recorded"
        lines = [f"{'run':8}  {'tags':18}  {'strategy':9}  {'adapters (weights)':44}  {'tokens':>9}"]
        for r in self.records:
            tokens = "" if r.input_tokens is None else f"{r.input_tokens}+{r.output_tokens}"
            tags = ",".join(t for t in r.tags if not t.startswith("seq:step:"))  # LCEL's own tags
            lines.append(  # run ids are time-ordered (uuid7): their tail tells runs apart
                f"{str(r.run_id)[-8:]:8}  {tags[:18]:18}  {r.route.strategy[:9]:9}  "
                f"{_describe_adapters(r.route)[:44]:44}  {tokens:>9}"
            )
        return "\n".join(lines)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self._started.clear()

    def _start(self, run_id: UUID, tags, serialized, kwargs) -> None:
        name = kwargs.get("name") or ((serialized or {}).get("name") if isinstance(serialized, dict) else None)
        with self._lock:
            self._started[run_id] = (time.perf_counter(), list(tags or []), name)


class RoutingCallbackHandler(BaseCallbackHandler):
    """Routes a stock Hugging Face LangChain model that runs the engine's model.

    .. code-block:: python

        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
        from transformers import pipeline

        engine = RoutedModel.demo()
        hf = HuggingFacePipeline(pipeline=pipeline(
            "text-generation", model=engine.model, tokenizer=engine.tokenizer, max_new_tokens=32))
        router = RoutingCallbackHandler(engine)
        ChatHuggingFace(llm=hf).invoke("Translate to German: thank you", config={"callbacks": [router]})
        router.last_route

    On ``on_llm_start`` / ``on_chat_model_start`` it routes the prompt (a chat: its last human
    message; ``metadata["lorauter"]`` overrides as for `ChatLoRAuter`) and activates the route
    with ``engine.activate`` (which locks the engine); on ``on_llm_end`` / ``on_llm_error`` it
    restores the base weights exactly, which releases the lock.

    Limits (a callback can only act around a whole run, not per row):

    - One route at a time on the model. Runs on other threads wait for the lock (so threads are
      safe, but serial); runs of one batch must share one route, or the batch is refused with
      `InvalidInputError` — use `ChatLoRAuter`/`LoRAuterLLM` for per-row routes in one pass.
    - Concurrent ``ainvoke`` calls on one event loop are not serialised (callbacks run on the
      loop's thread): concurrent runs with different routes are refused, same routes share.
    - Nothing guards the model from code that calls it outside a LangChain run.
    """

    raise_error = True  # a routing failure must stop the run, not silently use the base model
    run_inline = True  # act in the caller's thread, right before and after generation

    def __init__(self, engine, *, strategy: str | None = None) -> None:
        self.engine = engine
        self.strategy = strategy
        self.routes: dict[UUID, Route] = {}
        self.last_route: Route | None = None
        # Per thread: the activation it holds and the runs sharing it (a batch starts all its
        # runs on one thread before generating).
        self._held: dict[int, tuple[Any, dict[UUID, Route]]] = {}
        self._state = threading.Lock()

    def on_llm_start(self, serialized, prompts: list[str], *, run_id: UUID, metadata=None, **kwargs) -> None:
        self._begin(run_id, prompts[0] if prompts else "", metadata)

    def on_chat_model_start(
        self, serialized, messages: list[list[BaseMessage]], *, run_id: UUID, metadata=None, **kwargs
    ) -> None:
        text, _ = select_routing_text(messages_to_chat(messages[0] if messages else []), "question")
        self._begin(run_id, text, metadata)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def _begin(self, run_id: UUID, text: str, metadata) -> None:
        route = resolve_route(self.engine, text, parse_override((metadata or {}).get(METADATA_KEY)),
                              strategy=self.strategy)
        thread = threading.get_ident()
        with self._state:
            held = self._held.get(thread)
        if held is not None:  # this thread already runs a composition: a batch, or concurrent ainvoke
            current = next(iter(held[1].values()))
            if current.key() != route.key():
                self._restore(thread)
                raise InvalidInputError(
                    "RoutingCallbackHandler: runs with different routes cannot share the model at once "
                    f"({_describe(current)} vs {_describe(route)}); run them one by one, or use ChatLoRAuter"
                )
            held[1][run_id] = route
        else:
            activation = self.engine.activate(route)  # waits while another thread's run holds the model
            with self._state:
                self._held[thread] = (activation, {run_id: route})
        with self._state:
            self.routes[run_id] = route
            self.last_route = route

    def _end(self, run_id: UUID) -> None:
        with self._state:
            thread = next((t for t, (_, runs) in self._held.items() if run_id in runs), None)
            if thread is None:
                return
            runs = self._held[thread][1]
            runs.pop(run_id)
            if runs:
                return
        self._restore(thread)

    def _restore(self, thread: int) -> None:
        with self._state:
            activation, _ = self._held.pop(thread)
        activation.restore()  # exact base weights back; releases the engine's lock


def route_of_result(response: LLMResult) -> Route | None:
    """The route our models attach to a run's result (generation info, message metadata, or
    ``llm_output``), or None for another model's run."""
    for generations in response.generations:
        for g in generations:
            value = (g.generation_info or {}).get(METADATA_KEY)
            if value is None and isinstance(g, ChatGeneration):
                value = g.message.response_metadata.get(METADATA_KEY)
            if isinstance(value, dict):
                return Route.model_validate(value)
    value = (response.llm_output or {}).get(METADATA_KEY)
    return Route.model_validate(value) if isinstance(value, dict) else None


def _usage_of_result(response: LLMResult) -> tuple[int | None, int | None, str | None]:
    model_name = (response.llm_output or {}).get("model_name")
    for generations in response.generations:
        for g in generations:
            if isinstance(g, ChatGeneration):
                usage = getattr(g.message, "usage_metadata", None) or {}
                name = g.message.response_metadata.get("model_name") or model_name
                if usage:
                    return usage.get("input_tokens"), usage.get("output_tokens"), name
            info = g.generation_info or {}
            if "prompt_tokens" in info:
                return info.get("prompt_tokens"), info.get("completion_tokens"), info.get("model_name") or model_name
    return None, None, model_name


def _describe_adapters(route: Route) -> str:
    if route.is_base:
        return "base model"
    return ", ".join(f"{a} ({w:.2f})" for a, w in zip(route.adapters, route.weights))


def _describe(route: Route) -> str:
    tasks = ",".join(route.tasks[:3])
    return f"[{route.strategy}] {_describe_adapters(route)}" + (f" tasks={tasks}" if tasks else "")


__all__: Sequence[str] = ["LoRAuterCallbackHandler", "RouteRecord", "RoutingCallbackHandler", "route_of_result"]
