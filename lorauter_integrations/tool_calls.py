"""Tool calling for local models whose chat template has no tool support.

Small instruction-tuned models (the demo SmolLM2-135M among them) have no native function-calling
format: their chat template ignores a ``tools`` argument. The framework layers therefore describe
the tools in a system message (:func:`render_tools_prompt`), show earlier calls and results in the
same textual format (:func:`render_tool_call`, :func:`render_tool_result`), and recover calls from
whatever the model writes (:func:`parse_tool_calls`).

This module is framework-neutral: tool specs, calls and results are plain dicts, so the LangChain
and LlamaIndex layers share it.

The calling format follows the widely used Hermes/Qwen convention::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A small model will not always follow it, so the parser also accepts ```json fences, bare JSON
objects or lists, OpenAI-style ``{"function": {...}}`` objects, arguments given as a JSON string,
single-quoted Python literals and JSON cut off by a token limit. It never raises: text it cannot
read as a call stays in ``content``, and a call whose arguments cannot be read is returned in
``invalid_tool_calls`` with the reason.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ParsedToolCalls",
    "ToolPlan",
    "plan_tool_use",
    "normalize_tool_spec",
    "parse_json",
    "parse_tool_calls",
    "render_call_prefix",
    "render_json_prefix",
    "render_json_template",
    "render_tool_call",
    "render_tool_result",
    "render_tools_prompt",
]

_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON|tool_call|python)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
# Keys small models use for the arguments object, in order of preference.
_NAME_IN_TEXT = re.compile(r"""["']name["']\s*:\s*["']([^"']+)["']""")
_ARG_KEYS = ("arguments", "args", "parameters", "tool_input", "input", "kwargs")
_NAME_KEYS = ("name", "tool", "tool_name", "function_name")


class ParsedToolCalls(BaseModel):
    """What :func:`parse_tool_calls` found in a generated text."""

    content: str = Field(description="The text with every recognised call removed, stripped.")
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Valid calls: {"id": str, "name": str, "args": dict}.',
    )
    invalid_tool_calls: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Calls that could not be read: {"id", "name", "args": str, "error": str}.',
    )


def normalize_tool_spec(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``{"name", "description", "parameters"}`` from an OpenAI tool dict or a bare spec.

    Accepts ``{"type": "function", "function": {...}}`` (what LangChain's
    ``convert_to_openai_tool`` and LlamaIndex's ``ToolMetadata.to_openai_tool`` produce) as well
    as ``{"name": ..., "description": ..., "parameters": ...}``.
    """
    spec = tool.get("function", tool) if isinstance(tool.get("function"), Mapping) else tool
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool spec needs a non-empty 'name': got {dict(tool)!r}")
    parameters = spec.get("parameters") or {"type": "object", "properties": {}}
    return {"name": name, "description": spec.get("description") or "", "parameters": parameters}


def render_tools_prompt(tools: Sequence[Mapping[str, Any]], tool_choice: str | None = "auto") -> str:
    """Describe ``tools`` and the calling format, as the text of a system message.

    Args:
        tools: Tool specs (see :func:`normalize_tool_spec`).
        tool_choice: ``"auto"`` (call a tool only when it helps), ``"any"``/``"required"`` (must
            call one of them) or a tool name (must call that tool). ``"none"`` returns ``""``.
    """
    if tool_choice == "none" or not tools:
        return ""
    specs = [normalize_tool_spec(t) for t in tools]
    names = [s["name"] for s in specs]
    lines = [
        "You can call the following tools. Their signatures are in JSON Schema:",
        "<tools>",
        *(json.dumps(s, ensure_ascii=False) for s in specs),
        "</tools>",
        "To call a tool, reply with a JSON object inside <tool_call></tool_call> tags, like this:",
        # A concrete call shape: small models copy an example far better than they read a schema.
        *(f'<tool_call>{{"name": {json.dumps(s["name"])}, "arguments": {render_json_template(s["parameters"])}}}'
          "</tool_call>" for s in specs),
    ]
    if tool_choice in (None, "auto"):
        lines.append("Call a tool only when it helps; otherwise answer directly.")
    elif tool_choice in ("any", "required", True):
        lines.append(f"You must call one of these tools: {', '.join(names)}. Reply with the call only.")
    elif isinstance(tool_choice, str):
        if tool_choice not in names:
            raise ValueError(f"tool_choice '{tool_choice}' is not one of the tools: {', '.join(names)}")
        lines.append(f"You must call the tool '{tool_choice}'. Reply with the call only.")
    else:
        raise ValueError(f"tool_choice must be 'auto', 'any', 'none' or a tool name, got {tool_choice!r}")
    return "\n".join(lines)


def render_tool_call(name: str, args: Mapping[str, Any]) -> str:
    """A call in the format :func:`render_tools_prompt` asks for (for calls in the history)."""
    payload = json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def render_call_prefix(tool: Mapping[str, Any] | None = None) -> str:
    """The opening of a call, to prime the answer with when a call is required.

    Small models complete a started call far more reliably than they start one. With the tool
    known, the prefix runs up to its first argument's value (``...{"a": ``), or is the whole call
    when the tool takes no arguments; otherwise it runs up to the tool name (``{"name": "``).
    Parse the prefix plus the generated text.
    """
    if tool is None:
        return '<tool_call>\n{"name": "'
    spec = normalize_tool_spec(tool)
    head = f'<tool_call>\n{{"name": {json.dumps(spec["name"])}, "arguments": '
    if not (spec["parameters"].get("properties") or {}):
        return head + "{}}"  # nothing to fill in: the call is complete
    return head + render_json_prefix(spec["parameters"])


class ToolPlan(BaseModel):
    """How one request offers tools to a model whose chat template has none (both frameworks)."""

    names: list[str] = Field(description="The offered tools' names, in order.")
    prompt: str = Field(description="The system-message text describing the tools and the call format.")
    forced: str | None = Field(default=None, description="The tool the model must call, when one is forced.")
    prefill: str = Field(default="", description="The opening of the reply written for the model "
                         "(a required call is started for it; parse prefill + generated text).")
    stop: list[str] = Field(default_factory=list, description="Stop sequences to add ('</tool_call>' when primed).")


def plan_tool_use(tools: Sequence[Mapping[str, Any]], tool_choice: str | None = "auto") -> ToolPlan | None:
    """What to tell and prime the model with for ``tools`` under ``tool_choice``; None without tools.

    ``tool_choice``: ``"auto"``, ``"none"``, ``"any"``/``"required"`` (some call is required; with
    one tool that tool is forced) or a tool name (forced). A required call is started for the
    model (small models complete a started call far more reliably than they start one).
    """
    choice = tool_choice or "auto"
    if not tools or choice == "none":
        return None
    names = [normalize_tool_spec(t)["name"] for t in tools]
    must_call = choice in ("any", "required")
    forced = choice if choice in names else (names[0] if must_call and len(names) == 1 else None)
    if forced:
        prefill = render_call_prefix(tools[names.index(forced)])
    else:
        prefill = render_call_prefix() if must_call else ""
    return ToolPlan(names=names, prompt=render_tools_prompt(list(tools), choice), forced=forced,
                    prefill=prefill, stop=["</tool_call>"] if prefill else [])


def render_json_prefix(schema: Mapping[str, Any] | None) -> str:
    """The opening of a JSON object following ``schema``: up to the first property's value
    (its opening quote included when that value is a string)."""
    properties = ((schema or {}).get("properties") or {})
    if not properties:
        return "{"
    name, spec = next(iter(properties.items()))
    quote = '"' if _json_type(spec) == "string" and "enum" not in spec else ""
    return "{" + json.dumps(name) + ": " + quote


def render_json_template(schema: Mapping[str, Any] | None) -> str:
    """A one-line example object of ``schema``'s shape, e.g. ``{"city": "...", "days": 0}``."""
    properties = ((schema or {}).get("properties") or {})
    return "{" + ", ".join(f"{json.dumps(k)}: {_placeholder(v)}" for k, v in properties.items()) + "}"


def _json_type(spec: Mapping[str, Any]) -> str | None:
    if not isinstance(spec, Mapping):
        return None
    kind = spec.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        options = spec.get("anyOf") or spec.get("oneOf") or []
        kind = next((t for o in options if (t := _json_type(o)) not in (None, "null")), None)
    return kind


def _placeholder(spec: Mapping[str, Any]) -> str:
    if isinstance(spec, Mapping) and spec.get("enum"):
        return json.dumps(spec["enum"][0])
    return {"integer": "0", "number": "0.0", "boolean": "true", "array": "[]", "object": "{}",
            "null": "null"}.get(_json_type(spec) or "string", '"..."')


def render_tool_result(content: str, name: str | None = None) -> str:
    """A tool's result, wrapped so the model can tell it apart from the user's words."""
    head = f'<tool_response name="{name}">' if name else "<tool_response>"
    return f"{head}\n{content}\n</tool_response>"


def parse_tool_calls(
    text: str,
    tool_names: Collection[str] | None = None,
    *,
    default_tool: str | None = None,
) -> ParsedToolCalls:
    """Find tool calls in generated ``text``. Never raises.

    Args:
        text: What the model wrote.
        tool_names: The tools on offer. When given, a JSON object counts as a call only if it
            names one of them (or has an arguments key: then an unknown name is reported in
            ``invalid_tool_calls``); other JSON stays in ``content``.
        default_tool: The tool the model was forced to call (``tool_choice`` = a name, or the only
            tool with ``"any"``). A JSON object that is not shaped like a call is then read as
            that tool's arguments, and a call with an unknown name is attributed to it — small
            models often write just the arguments or misspell the name.
    """
    if not isinstance(text, str) or not text.strip():
        return ParsedToolCalls(content=text if isinstance(text, str) else "")
    known = {n.lower(): n for n in tool_names} if tool_names else None
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []

    def take(start: int, end: int, blob: str) -> bool:
        found = _calls_from_blob(blob, known, default_tool)
        if found is None:
            return False
        for item in found:
            (calls if "error" not in item else invalid).append(item)
        spans.append((start, end))
        return True

    # Explicit markers first: tags, then fences; then bare JSON in what is left.
    for m in _CALL_TAG.finditer(text):
        blob = m.group(1)
        if not take(m.start(), m.end(), blob) and blob.strip():
            # The model announced a call but wrote something unreadable: report, don't drop.
            named = _NAME_IN_TEXT.search(blob)
            name = default_tool or (named.group(1) if named else None)
            invalid.append(_invalid(name, blob.strip(), "not a JSON {name, arguments} object"))
            spans.append((m.start(), m.end()))
    for m in _FENCE.finditer(text):
        if not _overlaps(m.start(), m.end(), spans):
            take(m.start(), m.end(), m.group(1))
    pos = 0
    while pos < len(text):
        start = _next_json_start(text, pos, spans)
        if start < 0:
            break
        end = _balanced_end(text, start)
        if take(start, end, text[start:end]):
            pos = end
        else:
            pos = start + 1
    content = _remove_spans(text, spans).strip()
    return ParsedToolCalls(content=content, tool_calls=calls, invalid_tool_calls=invalid)


def parse_json(text: str) -> Any:
    """The first JSON object or list in ``text``, read leniently (fences, prose around it,
    single quotes, a tail cut off by a token limit). Raises ``ValueError`` when there is none."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    for m in _FENCE.finditer(text):
        try:
            return _load_json_like(m.group(1))
        except (ValueError, RecursionError):
            continue
    try:
        return _load_json_like(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# --- internals -------------------------------------------------------------------------------


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _invalid(name: str | None, args: str, error: str) -> dict[str, Any]:
    return {"id": _new_id(), "name": name, "args": args, "error": error}


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start < e and s < end for s, e in spans)


def _remove_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    out, pos = [], 0
    for s, e in sorted(spans):
        if s >= pos:
            out.append(text[pos:s])
            pos = e
        else:
            pos = max(pos, e)
    out.append(text[pos:])
    return "".join(out)


# Where a bare JSON call may begin: an object with a quoted key (or empty), or a list of objects.
# Requiring this keeps the scan linear-ish on bracket-heavy text such as "[[[[...".
_JSON_START = re.compile(r"""\{\s*["'}]|\[\s*\{""")


def _next_json_start(text: str, pos: int, spans: Sequence[tuple[int, int]]) -> int:
    while True:
        m = _JSON_START.search(text, pos)
        if m is None:
            return -1
        inside = next((e for s, e in spans if s <= m.start() < e), None)
        if inside is None:
            return m.start()
        pos = inside


def _balanced_end(text: str, start: int) -> int:
    """Index just past the bracket that closes ``text[start]`` (or the end of the text)."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _load_json_like(blob: str) -> Any:
    """JSON, then a Python literal (single quotes, True/None), then JSON cut off mid-way."""
    blob = blob.strip()
    if not blob or blob[0] not in "{[":
        start = min((i for i in (blob.find("{"), blob.find("[")) if i >= 0), default=-1)
        if start < 0:
            raise ValueError("no JSON object or list")
        blob = blob[start:]
    blob = blob[: _balanced_end(blob, 0)]
    try:
        return json.loads(blob)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(blob)
        if isinstance(value, (dict, list)):
            return value
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return json.loads(_close_truncated(blob))


def _close_truncated(blob: str) -> str:
    """Close the strings and brackets that a token limit left open; drop a dangling key/comma."""
    stack, quote, escaped = [], "", False
    for ch in blob:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == '"':
            quote = ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    fixed = blob + ('"' if quote else "")
    fixed = re.sub(r'(,\s*|,\s*"[^"]*"\s*:?\s*|:\s*)$', "", fixed.rstrip())
    return fixed + "".join(reversed(stack))


def _calls_from_blob(
    blob: str, known: Mapping[str, str] | None, default_tool: str | None
) -> list[dict[str, Any]] | None:
    """The calls a JSON text holds, or None when it is not a call at all."""
    try:
        value = _load_json_like(blob)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, Mapping) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    out = [c for item in items if (c := _call_from_object(item, known, default_tool)) is not None]
    return out or None


def _call_from_object(
    obj: Any, known: Mapping[str, str] | None, default_tool: str | None
) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("function"), Mapping):  # OpenAI shape
        obj = {**obj["function"], "id": obj.get("id")}
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    arg_key = next((k for k in _ARG_KEYS if k in obj), None)
    if known is not None:
        resolved = known.get(name.lower()) if name else None
    else:  # no tool list: a name plus an arguments key is the only call shape we trust
        resolved = name if arg_key else None
    if resolved is None:
        if default_tool and (arg_key is None or name is None):
            # Not call-shaped: the model wrote the forced tool's arguments directly.
            return {"id": _new_id(), "name": default_tool, "args": dict(obj)}
        if default_tool:
            resolved = default_tool  # call-shaped, name misspelled: the choice was forced
        elif name and arg_key:
            return _invalid(name, json.dumps(obj.get(arg_key), default=str), f"unknown tool '{name}'")
        else:
            return None  # ordinary JSON in the answer (e.g. {"name": "Bob"}), not a call
    args: Any = obj.get(arg_key, {}) if arg_key else {}
    if isinstance(args, str):
        try:
            args = _load_json_like(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return _invalid(resolved, args, "arguments are not valid JSON")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        return _invalid(resolved, json.dumps(args, default=str), "arguments are not a JSON object")
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else _new_id()
    return {"id": call_id, "name": resolved, "args": dict(args)}
