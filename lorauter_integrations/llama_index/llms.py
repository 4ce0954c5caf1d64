"""`LoRAuterLLM`: a LlamaIndex LLM whose every call is routed to LoRA adapters of a local model.

A thin translation layer: it picks the routing text, asks the engine for a `Route`, publishes it
(`LoRAuterRouteEvent`, `collect_routes`, ``additional_kwargs["lorauter"]``) and has the engine
generate with that route. All routing and generation logic lives in `RoutedModel`.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import BasePromptTemplate

from ..errors import InvalidInputError, ToolCallError
from ..routing.route import Route
from ..tool_calls import parse_tool_calls, plan_tool_use, render_tool_call, render_tool_result
from .context import RoutingInput, RoutingSource, current_routing_text, record_route, route_on, select_routing_text
from .events import LoRAuterRouteEvent

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

    from ..engine import Generation, RoutedModel

dispatcher = get_dispatcher(__name__)

# LlamaIndex roles -> the engine's chat roles.
_ROLES = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant",
    "chatbot": "assistant", "model": "assistant", "tool": "tool", "function": "tool",
}
_OVERRIDE_KEYS = frozenset({"adapters", "weights", "strategy"})


@dataclass(frozen=True)
class _Request:
    """One routed call, ready for the engine."""

    prompt: str | list[dict[str, str]]
    route: Route
    generation: dict[str, Any]
    tools: tuple[dict[str, Any], ...] = ()
    forced_tool: str | None = None
    prefill: str = ""  # start of the reply written for the model (a forced tool call's opening)


class LoRAuterLLM(FunctionCallingLLM):
    """LlamaIndex LLM over a `RoutedModel`: every call is routed to the right LoRA adapters.

    Routing input (``routing_input``):

    - ``"question"`` (default): the user's question. Inside a query engine that is the
      ``query_str`` of the response synthesiser's prompt (see ``question_keys``), not the long
      prompt padded with retrieved context, which drowns the task signal; inside a `route_on`
      block it is the text given there; otherwise the last user message written by the user
      (agent scaffolding such as ReAct observations is skipped).
    - ``"last_user"``: the last user message as is; ``"prompt"``: the whole prompt/conversation.

    Per call, ``lorauter={"adapters": [...], "weights": [...]}`` or ``lorauter={"strategy": "base"}``
    overrides the router. The `Route` is in ``additional_kwargs["lorauter"]`` of every response,
    dispatched as a `LoRAuterRouteEvent`, and appended to any enclosing `collect_routes` list.

    Example:
        >>> from llama_index.core import Settings
        >>> from lorauter_integrations import RoutedModel
        >>> Settings.llm = LoRAuterLLM(engine=RoutedModel.demo())
        >>> r = Settings.llm.complete("Translate to German: Good morning.")
        >>> r.text, r.additional_kwargs["lorauter"].adapters
    """

    max_new_tokens: int = Field(default=256, gt=0, description="Tokens to generate at most per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, description="Sampling seed, for reproducible sampling.")
    strategy: str | None = Field(
        default=None, description="Routing strategy for every call; None uses the engine's router."
    )
    routing_input: RoutingInput = Field(
        default="question", description="Which text is routed (see the class docstring)."
    )
    question_keys: tuple[str, ...] = Field(
        default=("query_str",),
        description="Prompt-template variables that hold the user's question, first match wins.",
    )

    _engine: RoutedModel = PrivateAttr()

    def __init__(self, engine: RoutedModel | None = None, **kwargs: Any) -> None:
        """Wrap ``engine``; without one, load the offline demo (`RoutedModel.demo()`)."""
        super().__init__(**kwargs)
        if engine is None:
            from ..engine import RoutedModel

            engine = RoutedModel.demo()
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "LoRAuterLLM"

    @property
    def engine(self) -> RoutedModel:
        """The `RoutedModel` that routes and generates."""
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._engine.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._engine.model_name,
        )

    # -- routing on the question: the prompt-template entry points ---------------------------
    # Response synthesisers call these with the template variables; the question is set as the
    # routing text for the chat call they make (context variable: safe across threads/tasks).

    def _question(self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]) -> str | None:
        if self.routing_input != "question":
            return None
        for key in self.question_keys:
            value = prompt_args.get(key, prompt.kwargs.get(key))
            if isinstance(value, str) and value.strip():
                return value
        return None

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with route_on(self._question(prompt, prompt_args)):
            return super().predict(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with route_on(self._question(prompt, prompt_args)):
            return await super().apredict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any):
        # The route is decided when the stream is opened, so the block can close before iteration.
        with route_on(self._question(prompt, prompt_args)):
            return super().stream(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any):
        with route_on(self._question(prompt, prompt_args)):
            return await super().astream(prompt, **prompt_args)

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: dict | None = None, **prompt_args: Any):
        with route_on(self._question(prompt, prompt_args)):
            return super().structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astructured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict | None = None, **prompt_args: Any
    ):
        with route_on(self._question(prompt, prompt_args)):
            return await super().astructured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    # -- request building ----------------------------------------------------------------------

    def _routing_text_for_prompt(self, prompt: str) -> tuple[str, RoutingSource]:
        question = current_routing_text() if self.routing_input == "question" else None
        return (question, "question") if question else (prompt, "prompt")

    def _decide(self, text: str, source: RoutingSource, override: Any) -> Route:
        """Route ``text`` (or apply a per-call override), then publish the decision."""
        strategy = self.strategy
        if override is not None:
            if not isinstance(override, Mapping) or not set(override) <= _OVERRIDE_KEYS or not override:
                raise InvalidInputError(
                    "lorauter= takes a dict with 'adapters' (and optional 'weights') or 'strategy', "
                    f"got {override!r}"
                )
            strategy = override.get("strategy", strategy)
        if override is not None and "adapters" in override:
            route = self._engine.route_from_override(list(override["adapters"]), override.get("weights"))
            text, source = "", "override"
        else:
            route = self._engine.route(text, strategy=strategy)
        dispatcher.event(
            LoRAuterRouteEvent(route=route, routing_text=text, source=source, model_name=self._engine.model_name)
        )
        record_route(route)
        return route

    def _generation_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        # LlamaIndex passes integration-specific kwargs through; keep the ones generation knows.
        return {
            "max_new_tokens": int(kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))),
            "temperature": float(kwargs.get("temperature", self.temperature)),
            "top_p": float(kwargs.get("top_p", self.top_p)),
            "stop": kwargs.get("stop"),
            "seed": kwargs.get("seed", self.seed),
        }

    def _completion_request(self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]) -> _Request:
        text, source = self._routing_text_for_prompt(prompt)
        route = self._decide(text, source, kwargs.get("lorauter"))
        full = prompt if formatted else self.completion_to_prompt(prompt)
        return _Request(prompt=full, route=route, generation=self._generation_kwargs(kwargs))

    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> _Request:
        if not messages:
            raise InvalidInputError("chat() needs at least one message")
        text, source = select_routing_text(messages, self.routing_input, current_routing_text())
        route = self._decide(text, source, kwargs.get("lorauter"))
        chat = [_to_engine_message(m) for m in messages]
        generation = self._generation_kwargs(kwargs)
        tools = tuple(kwargs.get("tools") or ())
        plan = plan_tool_use(tools, kwargs.get("tool_choice"))
        if plan is None:
            return _Request(prompt=chat, route=route, generation=generation)
        chat = _with_tools_prompt(chat, plan.prompt)
        if plan.prefill:  # the model continues our started assistant turn
            chat = [*chat, {"role": "assistant", "content": plan.prefill}]
            generation["stop"] = [*(generation["stop"] or []), *plan.stop]
        return _Request(
            prompt=chat, route=route, generation=generation, tools=tools, forced_tool=plan.forced, prefill=plan.prefill
        )

    # -- responses -----------------------------------------------------------------------------

    @staticmethod
    def _usage(route: Route, prompt_tokens: int, completion_tokens: int, finish_reason: str | None) -> dict[str, Any]:
        return {
            "lorauter": route,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "finish_reason": finish_reason,
        }

    def _assistant_message(self, text: str, request: _Request) -> ChatMessage:
        """The reply as a message; with tools on offer, recognised calls become ToolCallBlocks."""
        if not request.tools:
            return ChatMessage(role=MessageRole.ASSISTANT, content=text)
        parsed = parse_tool_calls(text, [_tool_name(t) for t in request.tools], default_tool=request.forced_tool)
        blocks: list[Any] = [TextBlock(text=parsed.content if parsed.tool_calls else text)]
        blocks += [
            ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=_declared_arguments(request.tools, c))
            for c in parsed.tool_calls
        ]
        extra = {"invalid_tool_calls": parsed.invalid_tool_calls} if parsed.invalid_tool_calls else {}
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)

    def _chat_response(self, gen: Generation, request: _Request) -> ChatResponse:
        return ChatResponse(
            message=self._assistant_message(request.prefill + gen.text, request),
            raw=gen.model_dump(mode="json"),
            additional_kwargs=self._usage(gen.route, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason),
        )

    def _completion_response(self, gen: Generation) -> CompletionResponse:
        return CompletionResponse(
            text=gen.text,
            raw=gen.model_dump(mode="json"),
            additional_kwargs=self._usage(gen.route, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason),
        )

    def _generate(self, request: _Request) -> Generation:
        return self._engine.generate([request.prompt], [request.route], **request.generation)[0]

    def _chat_stream(self, request: _Request) -> Iterator[ChatResponse]:
        text = ""
        for chunk in self._engine.stream(request.prompt, request.route, **request.generation):
            if not text and request.prefill:
                chunk = chunk.model_copy(update={"text": request.prefill + chunk.text})
            text += chunk.text
            if chunk.finish_reason is None:
                message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
                yield ChatResponse(message=message, delta=chunk.text, additional_kwargs={"lorauter": chunk.route})
            else:  # the last chunk: usage, and the tool calls parsed from the whole text
                yield ChatResponse(
                    message=self._assistant_message(text, request),
                    delta=chunk.text,
                    additional_kwargs=self._usage(
                        chunk.route, chunk.prompt_tokens, chunk.completion_tokens, chunk.finish_reason
                    ),
                )

    def _completion_stream(self, request: _Request) -> Iterator[CompletionResponse]:
        text = ""
        for chunk in self._engine.stream(request.prompt, request.route, **request.generation):
            text += chunk.text
            extra = (
                {"lorauter": chunk.route}
                if chunk.finish_reason is None
                else self._usage(chunk.route, chunk.prompt_tokens, chunk.completion_tokens, chunk.finish_reason)
            )
            yield CompletionResponse(text=text, delta=chunk.text, additional_kwargs=extra)

    # -- the LLM interface ---------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = self._completion_request(prompt, formatted, kwargs)
        return self._completion_response(self._generate(request))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        # Not a generator function: the route is decided (and published) when the call is made.
        return self._completion_stream(self._completion_request(prompt, formatted, kwargs))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._chat_request(messages, kwargs)
        return self._chat_response(self._generate(request), request)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(self._chat_request(messages, kwargs))

    # Async: routing and generation are blocking torch work, run in worker threads so the event
    # loop stays free; context variables (routing text, collectors, span ids) go with them.

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = await asyncio.to_thread(self._completion_request, prompt, formatted, kwargs)
        return self._completion_response(await asyncio.to_thread(self._generate, request))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        request = await asyncio.to_thread(self._completion_request, prompt, formatted, kwargs)
        return _iterate_in_thread(lambda: self._completion_stream(request))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = await asyncio.to_thread(self._chat_request, messages, kwargs)
        return self._chat_response(await asyncio.to_thread(self._generate, request), request)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        request = await asyncio.to_thread(self._chat_request, messages, kwargs)
        return _iterate_in_thread(lambda: self._chat_stream(request))

    # -- function calling ----------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg)
        return {
            "messages": messages,
            "tools": [t.metadata.to_openai_tool(skip_length_check=True) for t in tools],
            "tool_choice": tool_choice or ("required" if tool_required else "auto"),
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[BaseTool], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:  # keep the first call only, as the caller asked
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            if len(calls) > 1:
                response.message.blocks = [b for b in response.message.blocks if b not in calls[1:]]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of a `chat_with_tools` response (parsed from the generated text)."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ToolCallError(
                "the model answered without calling a tool; pass error_on_no_tool_call=False to accept "
                f"plain answers, or tool_required=True to insist. Reply: {(response.message.content or '')[:200]!r}"
            )
        return [
            ToolSelection(
                tool_id=b.tool_call_id or f"call_{uuid.uuid4().hex[:24]}",
                tool_name=b.tool_name,
                tool_kwargs=b.tool_kwargs if isinstance(b.tool_kwargs, dict) else {},
            )
            for b in calls
        ]


# -- message translation --------------------------------------------------------------------------


def _tool_name(tool: Mapping[str, Any]) -> str:
    spec = tool.get("function", tool)
    return str(spec.get("name", ""))


def _declared_arguments(tools: Sequence[Mapping[str, Any]], call: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments without keys its tool does not declare (unless its schema explicitly
    allows additional properties): small models often copy schema words (``type``,
    ``required``, ``properties``) next to the real arguments, and the tool would reject them."""
    spec = next((t.get("function", t) for t in tools if _tool_name(t) == call["name"]), {})
    params = spec.get("parameters") or {}
    declared = params.get("properties")
    if not declared or params.get("additionalProperties", False) is not False:
        return dict(call["args"])
    return {k: v for k, v in call["args"].items() if k in declared}


def _to_engine_message(message: ChatMessage) -> dict[str, str]:
    """A LlamaIndex message as the engine's ``{"role", "content"}``; tool traffic as text."""
    role = _ROLES.get(message.role.value, "user")
    content = message.content or ""
    if role == "assistant":
        calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
        rendered = [render_tool_call(b.tool_name, b.tool_kwargs if isinstance(b.tool_kwargs, dict) else {}) for b in calls]
        content = "\n".join(part for part in (content, *rendered) if part)
    elif role == "tool":
        content = render_tool_result(content, message.additional_kwargs.get("name"))
    return {"role": role, "content": content}


def _with_tools_prompt(chat: list[dict[str, str]], tools_prompt: str) -> list[dict[str, str]]:
    """Put the tool descriptions into the system message (the chat template has no ``tools``)."""
    if not tools_prompt:
        return chat
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{tools_prompt}".strip()}, *chat[1:]]
    return [{"role": "system", "content": tools_prompt}, *chat]


_DONE = object()


async def _iterate_in_thread(make_iterator: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in one worker thread and yield its items on the event loop.

    One thread for the whole iteration (not one per item): the engine's stream may hold a lock
    between items. Stopping early (``aclose``) tells the producer to close the iterator.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def produce() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    if stop.is_set():
                        break
                    put(item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # re-raised in the consumer
            put(_DONE, exc)
            return
        put(_DONE)

    context = contextvars.copy_context()
    loop.run_in_executor(None, context.run, produce)
    try:
        while True:
            item, error = await queue.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()  # the producer stops after its current item
