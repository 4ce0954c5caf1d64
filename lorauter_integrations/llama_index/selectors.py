"""LlamaIndex selectors (``LLMSingleSelector``, ``PydanticSingleSelector``, their multi twins) on a
routed model: route on the user's question, and turn the model's choice into what LlamaIndex parses.

- ``LLMSingleSelector``/``LLMMultiSelector`` call ``llm.predict(prompt, query_str=...)``: routed on
  ``query_str`` by `LoRAuterLLM.question_keys`. Their parser (``SelectionOutputParser``) expects
  ``[{"choice": int, "reason": str}]``; a small model often answers ``1``, ``[1]`` or "Choice 2
  because ..." (``[1]`` made LlamaIndex fail with ``argument of type 'int' is not iterable``).
  `selection_reply` rewrites such a reply into that JSON, or raises `SelectorReplyError`.
- ``PydanticSingleSelector``/``PydanticMultiSelector`` run a function-calling program, which calls
  ``predict_and_call`` with the formatted prompt only: `question_in_selector_prompt` reads the
  question back from LlamaIndex's selector templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.output_parsers.base import OutputParserException
from llama_index.core.output_parsers.selection import SelectionOutputParser
from llama_index.core.selectors.prompts import (
    DEFAULT_MULTI_PYD_SELECT_PROMPT_TMPL,
    DEFAULT_MULTI_SELECT_PROMPT_TMPL,
    DEFAULT_SINGLE_PYD_SELECT_PROMPT_TMPL,
    DEFAULT_SINGLE_SELECT_PROMPT_TMPL,
)

from ..errors import LoRAuterError


class SelectorReplyError(LoRAuterError, OutputParserException):
    """The model's reply to a selector prompt names no valid choice (also a LlamaIndex
    ``OutputParserException``, so code that catches LlamaIndex's parser errors catches it)."""


def _template_regex(template: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{\w+\})", template):
        if part == "{query_str}":
            out.append(r"(?P<question>.*?)")
        elif re.fullmatch(r"\{\w+\}", part):
            out.append(r".*?")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out), re.S)


_SELECTOR_TEMPLATES = [_template_regex(t) for t in (
    DEFAULT_SINGLE_PYD_SELECT_PROMPT_TMPL, DEFAULT_MULTI_PYD_SELECT_PROMPT_TMPL,
    DEFAULT_SINGLE_SELECT_PROMPT_TMPL, DEFAULT_MULTI_SELECT_PROMPT_TMPL,
)]


def question_in_selector_prompt(text: str) -> str | None:
    """The user's question inside a prompt rendered from one of LlamaIndex's selector templates."""
    for pattern in _SELECTOR_TEMPLATES:
        m = pattern.search(text)
        if m and m.group("question").strip():
            return m.group("question")
    return None


def question_in_messages(messages: Sequence[Any] | None) -> str | None:
    """The question of the last user message, when it is a rendered selector prompt."""
    for message in reversed(list(messages or ())):
        if str(getattr(message, "role", "")).lower().endswith("user"):
            return question_in_selector_prompt(str(getattr(message, "content", "") or ""))
    return None


def is_selection_prompt(prompt: Any) -> bool:
    return isinstance(getattr(prompt, "output_parser", None), SelectionOutputParser)


def selection_reply(text: str, prompt_args: Mapping[str, Any]) -> str:
    """``text`` if LlamaIndex's ``SelectionOutputParser`` reads valid choices from it; else the
    choice numbers it names (1..num_choices, at most ``max_outputs``, one for a single selector) as
    the JSON that parser expects, with the reply as the reason; else `SelectorReplyError`."""
    n = prompt_args.get("num_choices")
    n = n if isinstance(n, int) and n > 0 else None
    limit = prompt_args.get("max_outputs")
    limit = limit if isinstance(limit, int) and limit > 0 else 1

    def valid(choice: Any) -> bool:
        return isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1 and (n is None or choice <= n)

    try:
        answers = SelectionOutputParser().parse(text).parsed_output
        if answers and all(valid(a.choice) and isinstance(a.reason, str) for a in answers):
            return text
    except Exception:  # noqa: BLE001 - LlamaIndex's parser raises anything (TypeError, KeyError...)
        pass
    picks: list[int] = []
    for m in re.finditer(r"(?<![\d.])\d+(?![\d.])", text):
        choice = int(m.group())
        if valid(choice) and choice not in picks:
            picks.append(choice)
    if not picks:
        raise SelectorReplyError(
            f"the model's reply to the selector names no choice between 1 and {n or 'N'}: {text[:200]!r}. "
            "A small base model often cannot select; use a larger model, or route with a fixed choice"
        )
    reason = " ".join(text.split())[:500]
    return json.dumps([{"choice": c, "reason": reason} for c in picks[:limit]])


__all__ = ["SelectorReplyError", "is_selection_prompt", "question_in_messages", "question_in_selector_prompt",
           "selection_reply"]
