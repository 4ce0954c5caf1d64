"""Typed errors. Each is raised where its cause is known, with a message that says what to do."""

from __future__ import annotations


class LoRAuterError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(LoRAuterError, ValueError):
    """A prompt, an override or an argument is not usable as given."""


class DatasetError(LoRAuterError, ValueError):
    """A validation/test JSONL file is malformed (missing fields, wrong types, bad encoding...)."""


class EncoderError(LoRAuterError):
    """The sentence encoder cannot be loaded or does not match a store."""


class StoreError(LoRAuterError):
    """The Chroma task store cannot be opened, written or queried."""


class EncoderMismatchError(StoreError):
    """The store was built with another encoder (name or dimension)."""


class StoreBusyError(StoreError):
    """Another process holds the store folder (an embedded Chroma store has one process at a time)."""


class UnknownTaskError(StoreError, KeyError):
    """A task id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AdapterError(LoRAuterError):
    """An adapter is missing, unreadable, unsafe or incompatible with the base model."""


class UnknownAdapterError(AdapterError, KeyError):
    """An adapter id that the pool does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ManifestError(AdapterError, ValueError):
    """A pool's adapters.json is malformed (wrong types, repeated ids, not JSON...)."""


class IncompatibleAdapterError(AdapterError):
    """An adapter was trained for another base model, other modules or other shapes."""


class CompositionError(LoRAuterError):
    """Adapters cannot be combined with the requested strategy (e.g. unequal ranks)."""


class ModelLoadError(LoRAuterError):
    """The base model cannot be found or loaded."""


class ToolCallError(LoRAuterError, ValueError):
    """A tool call was required but the model's reply holds none that can be read."""


class EngineError(LoRAuterError):
    """The engine could not serve a request (its decode loop stopped, or it made no progress)."""


class EngineBusyError(EngineError):
    """Every row and queue place is taken and none freed up in time: retry later or raise the limits."""


class VLLMServerError(EngineError):
    """The vLLM server answered a request with an error (4xx/5xx) that is not the caller's input."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class VLLMUnreachableError(VLLMServerError):
    """No vLLM server answers at the engine's base URL (refused, DNS, timeout)."""


class AdapterRefusedError(AdapterError):
    """The vLLM server refused to load a composed adapter (rank above ``--max-lora-rank``, target
    modules it does not support, LoRA not enabled, ...)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
