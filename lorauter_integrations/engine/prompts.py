"""Prompts as the model sees them: a string or a chat -> model input text -> token ids."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError
from .params import check_text
from .protocol import PromptLike

ROLES = ("system", "user", "assistant", "tool")


def routing_text(prompt: PromptLike) -> str:
    """The text a prompt is routed on when the caller gives none: the string itself, or a
    chat's last user message (the last message when no user spoke)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") or "" for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if users:
        return users[-1]
    return (prompt[-1].get("content") or "") if prompt and isinstance(prompt[-1], dict) else ""


class PromptRenderer:
    """Renders prompts with the tokenizer's chat template (or plain ``role: text`` lines).

    Args:
        tokenizer: The base model's tokenizer.
        chat_template: Wrap a plain-text prompt as one user message when the tokenizer has a
            chat template (instruct models answer far better); off: feed the text verbatim.
    """

    def __init__(self, tokenizer: Any, *, chat_template: bool = True) -> None:
        self.tokenizer = tokenizer
        self.use_chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))

    def render(self, prompt: PromptLike) -> tuple[str, bool]:
        """Prompt -> model input text; True when it already holds the special tokens it needs."""
        if isinstance(prompt, str):
            if not check_text(prompt).strip():
                raise InvalidInputError("empty prompt: give some text")
            if not self.use_chat_template:
                return prompt, False
            prompt = [{"role": "user", "content": prompt}]
        elif not isinstance(prompt, list) or not prompt:
            raise InvalidInputError("a prompt is a string or a non-empty list of {'role', 'content'} messages")
        for m in prompt:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content") or "", str):
                raise InvalidInputError(f"bad chat message {m!r}: need role in {ROLES} and string content")
            check_text(m.get("content") or "", f"a {m['role']} message")
        if not any((m.get("content") or "").strip() for m in prompt):
            raise InvalidInputError("empty prompt: every message is empty")
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
        if not self.use_chat_template:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nassistant:", False
        cont = messages[-1]["role"] == "assistant"
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
            )
        except Exception as exc:  # jinja raises its own errors (e.g. roles a template refuses)
            raise InvalidInputError(
                f"the model's chat template rejects these messages ({exc}); check roles and their order"
            ) from exc
        return text, True

    def token_ids(self, prompt: PromptLike) -> list[int]:
        """The token ids the model is fed for ``prompt``."""
        text, templated = self.render(prompt)
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])


__all__ = ["ROLES", "PromptRenderer", "routing_text"]
