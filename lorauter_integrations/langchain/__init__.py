"""LangChain integration: routed chat and completion models, and routing callback handlers."""

from ..calls import RoutingOverride, collect_routes, route_on
from .callbacks import LoRAuterCallbackHandler, RouteRecord, RoutingCallbackHandler
from .chat_models import ChatLoRAuter
from .llms import LoRAuterLLM

__all__ = ["ChatLoRAuter", "LoRAuterCallbackHandler", "LoRAuterLLM", "RouteRecord", "RoutingCallbackHandler",
           "RoutingOverride", "collect_routes", "route_on"]
