"""`ChatLoRAuter`: a LangChain chat model whose every call runs with the LoRA adapters its route picks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import get_config_list, run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

from ..engine import Generation
from ..errors import InvalidInputError
from ..routing.route import Route
from ..tool_calls import (
    normalize_tool_spec,
    plan_tool_use,
    parse_json,
    parse_tool_calls,
    render_json_prefix,
    render_json_template,
    render_tool_call,
    render_tool_result,
)
from ._params import RoutedModelParams
from .overrides import METADATA_KEY, override_from_metadata, resolve_route
from .streaming import iterate_in_thread

RoutingInput = Literal["last_human", "conversation", "system_and_last_human"]
_RUN_ID_PREFIX = "lc_run-"  # what langchain-core gives the messages it ids itself


class ChatLoRAuter(RoutedModelParams, BaseChatModel):
    """Chat model over a `RoutedModel`: each call is routed to LoRA adapters, then generated.

    The route (which tasks matched, which adapters with which weights) is in
    ``response_metadata["lorauter"]`` of every answer, streamed or not, and in ``llm_output``.

    Example:
        .. code-block:: python

            from lorauter_integrations import RoutedModel
            from lorauter_integrations.langchain import ChatLoRAuter

            chat = ChatLoRAuter(engine=RoutedModel.demo(), max_tokens=32)
            msg = chat.invoke("Translate to French: good morning")
            msg.content, msg.response_metadata["lorauter"]["adapters"]

            # force the adapters (or the base model) for one call
            chat.invoke("hi", config={"metadata": {"lorauter": {"strategy": "base"}}})

    Batches (``batch``/``abatch``) run as ONE engine call: items with different routes share
    each forward pass (per-row adapters). Async methods run the engine in worker threads, so
    the event loop is never blocked.

    Tool calling: the demo model's chat template has no tool support, so bound tools are
    described in a system message and calls are parsed from the text (see
    ``lorauter_integrations.tool_calls``). With a forced ``tool_choice`` the answer is primed
    with the call's opening, which small models then complete far more reliably.
    """

    streaming: bool = False
    """Use streaming under ``invoke`` too (tokens reach callbacks as they are decoded)."""
    routing_input: RoutingInput = "last_human"
    """What the router reads: the last human message, the whole conversation, or the system
    prompt plus the last human message."""

    # ------------------------------------------------------------------ LangChain plumbing
    @property
    def _llm_type(self) -> str:
        return "lorauter-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._params_identity(), "routing_input": self.routing_input}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="lorauter",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------ generation
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, run_manager, kwargs)
        [generation] = self.engine.generate([request.chat], [request.route], **request.generation_kwargs)
        return self._chat_result(request, generation)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, run_manager, kwargs)
        if request.tool_names or request.json_output:
            # A tool call or a JSON answer is only readable once complete: one final chunk.
            [generation] = self.engine.generate([request.chat], [request.route], **request.generation_kwargs)
            message = self._chat_result(request, generation).generations[0].message
            yield ChatGenerationChunk(message=_as_last_chunk(message))
            return
        first = True
        for piece in self.engine.stream(request.chat, request.route, **request.generation_kwargs):
            last = piece.finish_reason is not None
            if not piece.text and not first and not last:
                continue
            chunk = AIMessageChunk(content=piece.text)
            if first:  # the route is known before the first token: say it once (metadata merges by +)
                chunk.response_metadata = {METADATA_KEY: request.route.model_dump()}
                first = False
            if last:
                chunk.chunk_position = "last"
                chunk.usage_metadata = _usage(piece.prompt_tokens, piece.completion_tokens)
                chunk.response_metadata = {
                    **chunk.response_metadata,
                    "model_name": self.model_name,
                    "model_provider": "lorauter",
                    "finish_reason": piece.finish_reason,
                }
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        sync_manager = run_manager.get_sync() if run_manager else None
        async for chunk in iterate_in_thread(lambda: self._stream(messages, stop, sync_manager, **kwargs)):
            yield chunk

    # ``_agenerate`` is BaseChatModel's: it runs ``_generate`` in an executor thread.

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage | Exception]:
        """Answer every input in ONE engine call (one forward pass per step for all items).

        Each item is still its own LangChain run (own callbacks, tags, metadata and override).
        With an LLM cache configured, items go through the per-item path so the cache is used.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        if self.cache not in (None, False) or _global_cache_set(self.cache):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        stop = kwargs.pop("stop", None)
        kwargs.pop("ls_structured_output_format", None)
        runs = [self._start_run(self._convert_input(x).to_messages(), cfg, stop, kwargs, len(inputs))
                for x, cfg in zip(inputs, configs)]
        outputs: list[Any] = [None] * len(runs)
        requests: dict[int, _Request] = {}
        for i, (messages, manager) in enumerate(runs):
            try:
                requests[i] = self._request(messages, stop, manager, dict(kwargs))
            except Exception as e:  # a bad item (e.g. a bad override) fails alone...
                manager.on_llm_error(e, response=LLMResult(generations=[]))
                if not return_exceptions:  # ...unless the caller wants the batch to raise
                    for _, other in runs[:i] + runs[i + 1 :]:
                        other.on_llm_error(e, response=LLMResult(generations=[]))
                    raise
                outputs[i] = e
        order = list(requests)
        # Items differ at most in chat and route; generation settings are the call's.
        gen_kwargs = requests[order[0]].generation_kwargs if order else {}
        try:
            generations = self.engine.generate(
                [requests[i].chat for i in order], [requests[i].route for i in order], **gen_kwargs
            ) if order else []
        except Exception as e:
            for i in order:
                runs[i][1].on_llm_error(e, response=LLMResult(generations=[]))
            if not return_exceptions:
                raise
            for i in order:
                outputs[i] = e
            return outputs
        for i, generation in zip(order, generations):
            manager = runs[i][1]
            result = self._chat_result(requests[i], generation)
            message = result.generations[0].message
            message.id = message.id or f"{_RUN_ID_PREFIX}-{manager.run_id}-0"
            manager.on_llm_end(LLMResult(generations=[result.generations], llm_output=result.llm_output))
            outputs[i] = message
        return outputs

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage | Exception]:
        """`batch` in a worker thread: one engine call, the event loop stays free."""
        return await run_in_executor(
            None, partial(self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)
        )

    # ------------------------------------------------------------------ tools and structure
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model.

        Args:
            tools: LangChain tools, pydantic classes, functions or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default), ``"any"``/``"required"``/``True`` (must call one),
                a tool name or ``{"type": "function", "function": {"name": ...}}`` (must call
                that one), ``"none"``.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [normalize_tool_spec(t)["name"] for t in formatted]
        choice = _normalize_tool_choice(tool_choice, names)
        return self.bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers as ``schema`` (a pydantic class, TypedDict or JSON schema).

        ``method="function_calling"`` forces a call of a tool shaped like the schema;
        ``"json_schema"`` asks for a JSON object following the schema; ``"json_mode"`` for any
        JSON object (``schema`` may be None). ``strict`` is accepted for compatibility: a local
        model has no constrained decoding, so parsing is lenient and validation is by pydantic.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            if schema is None:
                raise ValueError("method='function_calling' needs a schema")
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=tool_name, ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict}, "schema": schema})
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            json_schema = None
            if schema is not None:
                json_schema = schema.model_json_schema() if is_pydantic else convert_to_json_schema(schema)
            llm = self.bind(response_format={"type": "json_object", "schema": json_schema},
                            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema})
            parser = RunnableLambda(partial(_parse_structured, schema=schema if is_pydantic else None))
        else:
            raise ValueError(f"method must be function_calling, json_schema or json_mode, got {method!r}")
        if not include_raw:
            return llm | parser
        parse_or_none = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks([RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parse_or_none

    # ------------------------------------------------------------------ internals
    def routing_text(self, messages: Sequence[BaseMessage]) -> str:
        """The text the router reads for ``messages`` (see ``routing_input``)."""
        humans = [m for m in messages if isinstance(m, HumanMessage) or _role(m) == "user"]
        last_human = humans[-1].text if humans else ""
        if self.routing_input == "conversation" or not last_human.strip():
            return "\n".join(m.text for m in messages if m.text.strip())
        if self.routing_input == "system_and_last_human":
            system = [m.text for m in messages if isinstance(m, SystemMessage) and m.text.strip()]
            return "\n".join([*system, last_human])
        return last_human

    def _start_run(self, messages, config: RunnableConfig, stop, kwargs, batch_size: int):
        """Open one LangChain LLM run, as ``BaseChatModel.generate`` does for each input."""
        params = self._get_invocation_params(stop=stop, **kwargs)
        manager = CallbackManager.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            {**(config.get("metadata") or {}), **self._get_ls_params_with_defaults(stop=stop, **kwargs)},
            self.metadata,
        )
        (run_manager,) = manager.on_chat_model_start(
            self._serialized,
            [messages],
            invocation_params=params,
            options={"stop": stop},
            name=config.get("run_name"),
            run_id=config.pop("run_id", None),
            batch_size=batch_size,
        )
        return messages, run_manager

    def _request(self, messages: list[BaseMessage], stop, run_manager, kwargs: dict[str, Any]) -> "_Request":
        metadata = run_manager.metadata if run_manager is not None else {}
        route = resolve_route(
            self.engine, self.routing_text(messages), override_from_metadata(metadata), strategy=self.strategy
        )
        chat = messages_to_chat(messages)
        stops = list(stop or [])  # the model's own stops are merged in by _generation_kwargs
        plan = plan_tool_use(kwargs.get("tools") or [], kwargs.get("tool_choice"))
        names, forced, prefill, instructions = [], None, "", []
        if plan is not None:
            names, forced, prefill = plan.names, plan.forced, plan.prefill
            instructions.append(plan.prompt)
            stops.extend(plan.stop)
        response_format = kwargs.get("response_format")
        if response_format:
            schema = response_format.get("schema")
            instructions.append(_json_instructions(schema))
            prefill = render_json_prefix(schema)
        if instructions:
            chat = _with_system(chat, "\n\n".join(instructions))
        if prefill:
            chat = [*chat, {"role": "assistant", "content": prefill}]
        generation_kwargs = self._generation_kwargs(stops, kwargs)
        return _Request(chat=chat, route=route, prefill=prefill, tool_names=names, forced_tool=forced,
                        json_output=bool(response_format), generation_kwargs=generation_kwargs)

    def _chat_result(self, request: "_Request", generation: Generation) -> ChatResult:
        text = request.prefill + generation.text
        route = generation.route
        metadata = {
            METADATA_KEY: route.model_dump(),
            "model_name": self.model_name,
            "model_provider": "lorauter",
            "finish_reason": generation.finish_reason,
        }
        usage = _usage(generation.prompt_tokens, generation.completion_tokens)
        if request.tool_names:
            parsed = parse_tool_calls(text, request.tool_names, default_tool=request.forced_tool)
            message = AIMessage(
                content=parsed.content,
                tool_calls=[tool_call(name=c["name"], args=c["args"], id=c["id"]) for c in parsed.tool_calls],
                invalid_tool_calls=[
                    invalid_tool_call(name=c["name"], args=c["args"], id=c["id"], error=c["error"])
                    for c in parsed.invalid_tool_calls
                ],
                usage_metadata=usage,
                response_metadata=metadata,
            )
        else:
            message = AIMessage(content=text, usage_metadata=usage, response_metadata=metadata)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info={"finish_reason": generation.finish_reason})],
            llm_output={
                METADATA_KEY: route.model_dump(),
                "model_name": self.model_name,
                "token_usage": dict(usage),
            },
        )

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        """For ``generate`` over several conversations: the routes in input order."""
        outputs = [o for o in llm_outputs if o]
        return {"model_name": self.model_name, METADATA_KEY: [o.get(METADATA_KEY) for o in outputs]}


@dataclass
class _Request:
    """One call, ready for the engine."""

    chat: list[dict[str, str]]
    route: Route
    prefill: str = ""
    tool_names: list[str] = field(default_factory=list)
    forced_tool: str | None = None
    json_output: bool = False
    generation_kwargs: dict[str, Any] = field(default_factory=dict)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    raise InvalidInputError(f"unsupported message type {type(message).__name__}")


def messages_to_chat(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> the engine's chat dicts.

    Roles map to system/user/assistant/tool; an AI message's tool calls and a tool message's
    result are written in the textual format of ``lorauter_integrations.tool_calls`` (the tool
    name of a result is looked up from the call it answers).
    """
    tool_names: dict[str, str] = {}
    chat: list[dict[str, str]] = []
    for message in messages:
        role = _role(message)
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidInputError(f"unsupported chat role '{role}': use system, user, assistant or tool")
        content = message.text
        if isinstance(message, AIMessage) and message.tool_calls:
            calls = [render_tool_call(c["name"], c["args"]) for c in message.tool_calls]
            content = "\n".join(filter(None, [content, *calls]))
            tool_names.update({c["id"]: c["name"] for c in message.tool_calls if c.get("id")})
        elif isinstance(message, ToolMessage):
            name = message.name or tool_names.get(message.tool_call_id)
            content = render_tool_result(content, name)
        chat.append({"role": role, "content": content})
    return chat


def _with_system(chat: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """Add ``text`` to the system message (creating one first when there is none)."""
    if chat and chat[0]["role"] == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{text}".strip()}, *chat[1:]]
    return [{"role": "system", "content": text}, *chat]


def _json_instructions(schema: dict[str, Any] | None) -> str:
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


def _normalize_tool_choice(choice: Any, names: Sequence[str]) -> str | None:
    if choice is None or choice == "auto":
        return "auto" if names else None
    if choice is True or choice in ("any", "required"):
        return "any"
    if choice is False or choice == "none":
        return "none"
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(f"tool_choice {choice!r} is not 'auto', 'any', 'none' or one of the tools: {', '.join(names)}")


def _as_last_chunk(message: AIMessage) -> AIMessageChunk:
    chunks = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
        for i, c in enumerate(message.tool_calls)
    ] + [
        tool_call_chunk(name=c["name"], args=c["args"], id=c["id"], index=len(message.tool_calls) + i)
        for i, c in enumerate(message.invalid_tool_calls)
    ]
    return AIMessageChunk(
        content=message.content,
        tool_call_chunks=chunks,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        chunk_position="last",
    )


def _parse_structured(message: BaseMessage, schema: type[BaseModel] | None) -> Any:
    """JSON-mode parser: lenient JSON reading, then pydantic validation when a class was given."""
    from langchain_core.exceptions import OutputParserException

    try:
        value = parse_json(message.text)
    except ValueError as e:
        raise OutputParserException(f"the model did not answer with JSON: {e}", llm_output=message.text) from e
    if schema is None:
        return value
    try:
        return schema.model_validate(value)
    except Exception as e:
        raise OutputParserException(f"the JSON does not match {schema.__name__}: {e}", llm_output=message.text) from e


def _global_cache_set(cache: Any) -> bool:
    from langchain_core.globals import get_llm_cache

    return cache is None and get_llm_cache() is not None
