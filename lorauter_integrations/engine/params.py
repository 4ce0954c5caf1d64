"""Generation options, validated once for every engine: typed errors, never a failing row later."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import InvalidInputError

_MAX_SEED = 2**63  # torch.Generator.manual_seed takes a signed 64-bit value

#: Generation arguments of ``transformers`` that map onto ours (``do_sample=False`` = greedy).
ACCEPTED = ("max_new_tokens", "temperature", "top_p", "stop", "seed", "do_sample", "generation_config")


class GenerationParams(BaseModel):
    """One request's decoding settings (None in a constructor argument means the default)."""

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def of(
        cls,
        max_new_tokens: Any = None,
        temperature: Any = None,
        top_p: Any = None,
        stop: Any = None,
        seed: Any = None,
        do_sample: Any = None,
        generation_config: Any = None,
        **unknown: Any,
    ) -> "GenerationParams":
        """Validate loosely typed options (framework kwargs, CLI values) into one value.

        Accepts the usual ``transformers`` names too: ``do_sample=False`` means greedy, and a
        ``GenerationConfig`` supplies max_new_tokens / temperature / top_p / do_sample that are
        not given explicitly. Anything else is refused with the list of accepted names.
        """
        if unknown:
            raise InvalidInputError(
                f"unsupported generation argument(s) {sorted(unknown)}; accepted: {', '.join(ACCEPTED)}"
            )
        if generation_config is not None:
            get = lambda name: getattr(generation_config, name, None)  # noqa: E731
            max_new_tokens = max_new_tokens if max_new_tokens is not None else get("max_new_tokens")
            if do_sample is None:
                do_sample = get("do_sample")
            if do_sample:
                temperature = temperature if temperature is not None else get("temperature")
                top_p = top_p if top_p is not None else get("top_p")
        max_new_tokens = 256 if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        temperature = _finite("temperature", 0.0 if temperature is None else temperature)
        if temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {temperature}")
        if do_sample is not None and not isinstance(do_sample, bool):
            raise InvalidInputError(f"do_sample must be True or False, got {do_sample!r}")
        if do_sample is False:
            temperature = 0.0
        elif do_sample is True and temperature == 0.0:
            temperature = 1.0  # transformers' default temperature when sampling
        top_p = _finite("top_p", 1.0 if top_p is None else top_p)
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {top_p}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < _MAX_SEED):
            raise InvalidInputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        return cls(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   stop=_stops(stop), seed=seed)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value}")
    return value


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str) or not isinstance(stop, Sequence):
        raise InvalidInputError("stop must be a list of non-empty strings")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise InvalidInputError("stop must be a list of non-empty strings")
        check_text(s, "a stop sequence")
    return tuple(dict.fromkeys(stop))


def check_text(text: str, what: str = "the prompt") -> str:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates, e.g. from a bad decode).

    Refused rather than replaced: a silently altered prompt would be routed and answered as
    something the caller did not send.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"{what} holds a lone surrogate ({text[e.start:e.end]!r} at position {e.start}), which is not valid "
            "Unicode text; it is refused: decode your input with errors='replace' or fix its source"
        ) from None
    return text


__all__ = ["ACCEPTED", "GenerationParams", "check_text"]
