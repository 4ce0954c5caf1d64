"""LlamaIndex integration: a routed LLM, its routing event, offline embeddings, routing context."""

from ..calls import collect_routes, route_on
from .embeddings import LoRAuterEmbedding
from .events import LoRAuterRouteEvent
from .llms import LoRAuterLLM

__all__ = ["LoRAuterEmbedding", "LoRAuterLLM", "LoRAuterRouteEvent", "collect_routes", "route_on"]
