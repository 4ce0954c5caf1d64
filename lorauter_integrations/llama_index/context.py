"""Per-request routing context: which text to route on, and where to collect routes.

Both are context variables, so they follow a request through threads started with
``contextvars.copy_context()``, through ``asyncio`` tasks and ``asyncio.to_thread``, and never leak
between concurrent requests.

``LoRAuterLLM.predict`` / ``stream`` / ``apredict`` / ``astream`` (what every LlamaIndex response
synthesiser calls) set the routing text from the prompt's ``query_str`` template variable, so a
query engine routes on the user's question, not on the prompt padded with retrieved context.
`route_on` does the same by hand for pipelines that call the LLM otherwise.

Why this design: the question is only visible where the prompt template is filled (``predict``
and friends get ``query_str``), while generation happens a few calls further down (``chat``).
A context variable set around that span carries it there for sync, streaming and async calls
alike, works with custom templates that keep the ``query_str`` name, and, unlike listening to
instrumentation spans, does not depend on which handlers a user has registered.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Literal, Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from ..routing.route import Route

RoutingInput = Literal["question", "last_user", "prompt"]
RoutingSource = Literal["question", "last_user", "prompt", "override"]

# User-role turns that agents write themselves (ReAct sends tool observations and format
# reminders as user messages): routing on them would route on a tool's output, not the request.
_AGENT_TURN_PREFIXES = ("Observation:", "Error while parsing the output", "FAILURE: Your previous response")

_routing_text: ContextVar[str | None] = ContextVar("lorauter_routing_text", default=None)
_collectors: ContextVar[tuple[list[Route], ...]] = ContextVar("lorauter_route_collectors", default=())


@contextmanager
def route_on(text: str | None) -> Iterator[None]:
    """Route every `LoRAuterLLM` call inside the block on ``text`` (``None`` leaves it unchanged).

    Example:
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
    """Collect the `Route` of every `LoRAuterLLM` call made inside the block, in call order.

    Example:
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


def select_routing_text(
    messages: Sequence[ChatMessage], routing_input: RoutingInput = "question", question: str | None = None
) -> tuple[str, RoutingSource]:
    """The text a chat is routed on, and where it came from.

    ``"question"``: ``question`` (the query engine's ``query_str`` or a `route_on` text) when
    given, else the last user turn written by the user (agent scaffolding skipped);
    ``"last_user"``: the last user message as is; ``"prompt"``: every message, joined.
    """
    if routing_input == "question" and question and question.strip():
        return question, "question"
    whole = "\n".join(m.content for m in messages if m.content)
    if routing_input == "prompt":
        return whole, "prompt"
    user_turns = [m.content for m in messages if m.role == MessageRole.USER and m.content]
    if routing_input == "question":
        user_turns = [t for t in user_turns if not t.lstrip().startswith(_AGENT_TURN_PREFIXES)] or user_turns
    return (user_turns[-1], "last_user") if user_turns else (whole, "prompt")
