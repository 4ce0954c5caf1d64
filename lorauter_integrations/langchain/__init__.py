"""LangChain integration: routed chat and completion models, and routing callback handlers."""

from .callbacks import LoRAuterCallbackHandler, RoutingCallbackHandler
from .chat_models import ChatLoRAuter
from .llms import LoRAuterLLM
from .overrides import RoutingOverride

__all__ = ["ChatLoRAuter", "LoRAuterCallbackHandler", "LoRAuterLLM", "RoutingCallbackHandler", "RoutingOverride"]
