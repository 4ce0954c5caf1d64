"""The framework-neutral call layer: everything a routed LLM call decides before and after the engine.

LangChain and LlamaIndex only translate their messages and responses to and from these values:

- routing overrides: one `RoutingOverride` (``adapters``/``weights``, or ``strategy``/``exclude_tasks``),
  read by `parse_override` and turned into a `Route` by `resolve_route`;
- which text is routed: one vocabulary (`RoutingInput`) and policy (`select_routing_text`), with
  `route_on` to route a block of calls on a given question, and `collect_routes` to see routes;
- tools and JSON answers for a model whose chat template has none: `plan_call` adds the tool
  descriptions or JSON instructions, primes forced calls and adds their stops;
- generation options (`generation_options`), the reply (`read_reply`: text, tool calls, whether a
  call was cut off by the token budget) and token usage (`usage`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .engine.protocol import Engine, Generation, PromptLike
from .errors import InvalidInputError
from .route import Route
from .tool_calls import parse_tool_calls, plan_tool_use, render_json_prefix, render_json_template

METADATA_KEY = "lorauter"
"""The key of a call's override (LangChain ``config["metadata"]``, LlamaIndex ``lorauter=`` kwarg)
and of the route in response metadata."""

# --------------------------------------------------------------------------------- overrides


class RoutingOverride(BaseModel):
    """What a caller may fix for one call.

    >>> chat.invoke("Translate to German: good morning",
    ...             config={"metadata": {"lorauter": {"adapters": ["wmt16_translate_deen"]}}})  # LangChain
    >>> llm.complete("hi", lorauter={"strategy": "base"})  # LlamaIndex
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

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


def parse_override(value: Any) -> RoutingOverride | Route | None:
    """A call's override: None, a ready `Route`, or a dict validated as a `RoutingOverride`."""
    if value is None or isinstance(value, (Route, RoutingOverride)):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"the '{METADATA_KEY}' override must be a dict like {{'adapters': [...], 'weights': [...]}} "
            f"or {{'strategy': 'base'}}, got {type(value).__name__}"
        )
    data = dict(value)
    if isinstance(data.get("weights"), list):  # ints are fine as weights; strict mode refuses "0.5" and True
        data["weights"] = [float(w) if type(w) is int else w for w in data["weights"]]
    try:
        return RoutingOverride.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
        raise InvalidInputError(
            f"bad '{METADATA_KEY}' override ({problems}); allowed keys: adapters, weights, strategy, exclude_tasks"
        ) from None


def resolve_route(engine: Engine, text: str, override: RoutingOverride | Route | None = None, *,
                  strategy: str | None = None) -> Route:
    """The route of one call: the override when given, else the engine's router on ``text``.

    ``strategy`` is the calling model's default (None: the engine's).
    """
    if isinstance(override, Route):
        return override
    if override is not None and override.adapters is not None:
        return engine.route_from_override(override.adapters, override.weights)
    if override is not None:
        return engine.route(text, strategy=override.strategy or strategy, exclude_tasks=override.exclude_tasks)
    return engine.route(text, strategy=strategy)


# --------------------------------------------------------------------------------- routing text

RoutingInput = Literal["question", "last_user", "system_and_last_user", "conversation"]
"""Which text of a call is routed:

- ``question`` (default): the user's question: the text of the innermost `route_on` block (a
  LlamaIndex query engine sets it to the query), else the last user message written by the user
  (agent scaffolding such as ReAct observations skipped);
- ``last_user``: the last user message as is;
- ``system_and_last_user``: the system prompt and the last user message;
- ``conversation``: every message, joined.
"""
RoutingSource = Literal["question", "last_user", "system_and_last_user", "conversation", "prompt", "override"]
"""Where a routed text came from (``prompt``: a completion prompt as a whole)."""

# User-role turns that agents write themselves (ReAct sends tool observations and format
# reminders as user messages): routing on them would route on a tool's output, not the request.
_AGENT_TURN_PREFIXES = ("Observation:", "Error while parsing the output", "FAILURE: Your previous response")

_routing_text: ContextVar[str | None] = ContextVar("lorauter_routing_text", default=None)
_collectors: ContextVar[tuple[list[Route], ...]] = ContextVar("lorauter_route_collectors", default=())


@contextmanager
def route_on(text: str | None) -> Iterator[None]:
    """Route every call made inside the block on ``text`` (None or blank: unchanged).

    A context variable: it follows the calls through threads started with
    ``contextvars.copy_context()``, asyncio tasks and ``asyncio.to_thread``, and never leaks
    between concurrent requests.

    >>> with route_on("Is this review positive? 'A delight from start to end.'"):
    ...     answer = chat_engine.chat("Answer in one word.")
    """
    if text is None or not text.strip():
        yield
        return
    token = _routing_text.set(text)
    try:
        yield
    finally:
        _routing_text.reset(token)


def current_routing_text() -> str | None:
    """The text set by the innermost `route_on` block, if any."""
    return _routing_text.get()


@contextmanager
def collect_routes() -> Iterator[list[Route]]:
    """Collect the `Route` of every routed call made inside the block, in call order.

    >>> with collect_routes() as routes:
    ...     response = query_engine.query("Translate 'good morning' into French.")
    >>> routes[0].adapters
    """
    routes: list[Route] = []
    token = _collectors.set((*_collectors.get(), routes))
    try:
        yield routes
    finally:
        _collectors.reset(token)


def record_route(route: Route) -> None:
    """Append ``route`` to every enclosing `collect_routes` list."""
    for routes in _collectors.get():
        routes.append(route)


def select_routing_text(chat: Sequence[Mapping[str, str]], routing_input: RoutingInput = "question",
                        question: str | None = None) -> tuple[str, RoutingSource]:
    """The text a chat (``{"role", "content"}`` dicts) is routed on, and where it came from.

    ``question`` defaults to the current `route_on` text.
    """
    if routing_input not in RoutingInput.__args__:
        raise InvalidInputError(f"routing_input must be one of {', '.join(RoutingInput.__args__)}, "
                                f"got {routing_input!r}")
    whole = "\n".join(m["content"] for m in chat if (m.get("content") or "").strip())
    if routing_input == "conversation":
        return whole, "conversation"
    if routing_input == "question":
        question = question if question is not None else current_routing_text()
        if question and question.strip():
            return question, "question"
    users = [m["content"] for m in chat if m.get("role") == "user" and (m.get("content") or "").strip()]
    if routing_input == "question":
        users = [t for t in users if not t.lstrip().startswith(_AGENT_TURN_PREFIXES)] or users
    if not users:
        return whole, "conversation"
    if routing_input == "system_and_last_user":
        system = [m["content"] for m in chat if m.get("role") == "system" and (m.get("content") or "").strip()]
        return "\n".join([*system, users[-1]]), "system_and_last_user"
    return users[-1], "last_user"


# --------------------------------------------------------------------------------- planning a call


@dataclass(frozen=True)
class CallPlan:
    """One routed call, ready for the engine: ``engine.generate([plan.prompt], [plan.route], **plan.options)``."""

    prompt: PromptLike
    route: Route
    options: dict[str, Any]
    routing_text: str = ""
    source: RoutingSource = "question"
    tool_names: tuple[str, ...] = ()
    tools: tuple[Mapping[str, Any], ...] = ()
    forced_tool: str | None = None
    prefill: str = ""  # the start of the reply written for the model (a forced call's opening)
    json_output: bool = False

    @property
    def whole_reply(self) -> bool:
        """True when the reply is only readable once complete (a tool call or a JSON answer)."""
        return bool(self.tool_names) or self.json_output


def generation_options(defaults: Mapping[str, Any], call_kwargs: Mapping[str, Any],
                       stop: Sequence[str] | None = None) -> dict[str, Any]:
    """Engine options for one call: the call's keyword arguments over the model's fields.

    ``defaults`` and ``call_kwargs`` use the engine's names (``max_new_tokens``, ``temperature``,
    ``top_p``, ``seed``, ``stop``); ``max_tokens`` is read as ``max_new_tokens`` and the usual
    ``transformers`` ``do_sample`` / ``generation_config`` pass through. Framework kwargs we do
    not know (tool specs, tracing) are left out. Stops of the model and of the call are merged.
    """
    options = {k: defaults.get(k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    if "max_tokens" in call_kwargs:
        options["max_new_tokens"] = call_kwargs["max_tokens"]
    for key in ("max_new_tokens", "temperature", "top_p", "seed", "do_sample", "generation_config"):
        if key in call_kwargs:
            options[key] = call_kwargs[key]
    stops = list(dict.fromkeys([*(defaults.get("stop") or []), *(call_kwargs.get("stop") or []), *(stop or [])]))
    options["stop"] = stops or None
    return options


def plan_call(
    engine: Engine,
    chat: list[dict[str, str]] | str,
    *,
    options: dict[str, Any],
    routing_input: RoutingInput = "question",
    routing_text: str | None = None,
    override: Any = None,
    strategy: str | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
    tool_choice: str | None = None,
    response_format: Mapping[str, Any] | None = None,
) -> CallPlan:
    """Route one call and prepare its prompt.

    Args:
        engine: The `Engine` that routes (and will generate).
        chat: The conversation as ``{"role", "content"}`` dicts, or a plain completion prompt.
        options: From `generation_options`.
        routing_input: Which text is routed (see `RoutingInput`).
        routing_text: Route on this text instead (e.g. LlamaIndex's query).
        override: A call override (dict, `RoutingOverride` or `Route`), see `parse_override`.
        strategy: The calling model's default strategy.
        tools: OpenAI-style tool specs on offer; ``tool_choice``: auto / any / required / none / a name.
        response_format: ``{"type": "json_object", "schema": {...} | None}`` for a JSON answer.
    """
    override = parse_override(override)
    if routing_text is not None:
        text, source = routing_text, "question"
    elif isinstance(chat, str):
        question = current_routing_text() if routing_input == "question" else None
        text, source = (question, "question") if question else (chat, "prompt")
    else:
        text, source = select_routing_text(chat, routing_input)
    route = resolve_route(engine, text, override, strategy=strategy)
    if isinstance(override, Route) or (override is not None and override.adapters is not None):
        text, source = "", "override"
    record_route(route)
    options = dict(options)
    plan = plan_tool_use(list(tools), tool_choice) if tools else None
    if isinstance(chat, str):
        if plan is not None or response_format:
            chat = [{"role": "user", "content": chat}]
        else:
            return CallPlan(prompt=chat, route=route, options=options, routing_text=text, source=source)
    instructions, prefill, stops = [], "", list(options.get("stop") or [])
    if plan is not None:
        instructions.append(plan.prompt)
        prefill = plan.prefill
        stops += [s for s in plan.stop if s not in stops]
    if response_format:
        schema = response_format.get("schema")
        instructions.append(_json_instructions(schema))
        prefill = render_json_prefix(schema)
    if instructions:
        chat = _with_system(chat, "\n\n".join(instructions))
    if prefill:
        chat = [*chat, {"role": "assistant", "content": prefill}]
    options["stop"] = stops or None
    return CallPlan(
        prompt=chat, route=route, options=options, routing_text=text, source=source,
        tool_names=tuple(plan.names) if plan else (), tools=tuple(tools) if plan else (),
        forced_tool=plan.forced if plan else None, prefill=prefill, json_output=bool(response_format),
    )


def _with_system(chat: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """Add ``text`` to the system message (creating one first when there is none)."""
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{text}".strip()}, *chat[1:]]
    return [{"role": "system", "content": text}, *chat]


def _json_instructions(schema: Mapping[str, Any] | None) -> str:
    """Ask for one JSON object; with a schema, list its fields and show its shape."""
    if not schema or not schema.get("properties"):
        return "Reply with one JSON object only."
    fields = [
        f"- {name}: {spec.get('description') or spec.get('title') or name}"
        for name, spec in schema["properties"].items()
    ]
    return "\n".join([
        "Reply with one JSON object only, with these fields:", *fields,
        f"in this form: {render_json_template(schema)}",
    ])


# --------------------------------------------------------------------------------- the reply


@dataclass(frozen=True)
class Reply:
    """What the model answered, read for the framework layer."""

    text: str  # the whole reply (the primed opening included)
    content: str  # the text without the tool calls
    route: Route
    finish_reason: str | None
    usage: dict[str, int]
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "id"}
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "id", "error"}

    @property
    def truncated_tool_call(self) -> bool:
        """True when the token budget ended the reply in the middle of a tool call."""
        return self.finish_reason == "length" and (bool(self.invalid_tool_calls) or "<tool_call>" in self.text)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Token usage in LangChain's ``usage_metadata`` names."""
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def read_reply(plan: CallPlan, generation: Generation) -> Reply:
    """The generated text with the plan's primed opening, and the tool calls read from it."""
    text = plan.prefill + generation.text
    common = dict(text=text, route=generation.route, finish_reason=generation.finish_reason,
                  usage=usage(generation.prompt_tokens, generation.completion_tokens))
    if not plan.tool_names:
        return Reply(content=text, **common)
    parsed = parse_tool_calls(text, list(plan.tool_names), default_tool=plan.forced_tool)
    calls, invalid = list(parsed.tool_calls), list(parsed.invalid_tool_calls)
    if calls and generation.finish_reason == "length" and _cut_inside_last_call(text):
        # The lenient parser closed a call the token budget cut off: its arguments are not what
        # the model meant to send, so it is reported as invalid, never returned as a call.
        cut = calls.pop()
        invalid.append({"name": cut["name"], "args": json.dumps(cut["args"]), "id": cut["id"],
                        "error": "the token budget ended this call before it was complete: raise the token limit"})
    return Reply(content=parsed.content, tool_calls=calls, invalid_tool_calls=invalid, **common)


def _cut_inside_last_call(text: str) -> bool:
    """True when the text ends inside an opened ``<tool_call>`` whose JSON is not complete."""
    start = text.rfind("<tool_call>")
    if start < 0:
        return False
    rest = text[start + len("<tool_call>"):]
    if "</tool_call>" in rest:
        return False
    try:
        json.loads(rest.strip())
    except ValueError:
        return True
    return False


def no_tool_call_message(text: str, *, truncated: bool, max_tokens_name: str) -> str:
    """Why a reply holds no usable tool call, and what to do about it (``truncated``: the token
    budget ended it inside a call, see `Reply.truncated_tool_call`)."""
    if truncated:
        return (f"the model started a tool call but the token budget ended it before the call was complete: "
                f"raise {max_tokens_name}. Reply: {text[:200]!r}")
    return (f"the model answered without calling a tool; pass error_on_no_tool_call=False to accept plain "
            f"answers, or tool_required=True to insist. Reply: {text[:200]!r}")


__all__ = [
    "METADATA_KEY", "CallPlan", "Reply", "RoutingInput", "RoutingOverride", "RoutingSource", "collect_routes",
    "current_routing_text", "generation_options", "no_tool_call_message", "parse_override", "plan_call",
    "read_reply", "record_route", "resolve_route", "route_on", "select_routing_text", "usage",
]
