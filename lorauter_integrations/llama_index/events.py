"""`LoRAuterRouteEvent`: the routing decision, emitted through LlamaIndex instrumentation.

Every routed LLM call dispatches one event before generating, so any handler registered on the
root dispatcher (``get_dispatcher().add_event_handler(...)``) and observability integrations
built on it (Arize Phoenix, Langfuse, ...) see which adapters served the call and why.
"""

from __future__ import annotations

from llama_index.core.instrumentation.events.base import BaseEvent
from pydantic import Field

from ..route import Route
from ..calls import RoutingSource


class LoRAuterRouteEvent(BaseEvent):
    """One routing decision of `LoRAuterLLM`.

    Example:
        >>> from llama_index.core.instrumentation import get_dispatcher
        >>> from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        >>> class PrintRoutes(BaseEventHandler):
        ...     def handle(self, event, **kwargs):
        ...         if isinstance(event, LoRAuterRouteEvent):
        ...             print(event.route.adapters, event.route.weights)
        >>> get_dispatcher().add_event_handler(PrintRoutes())
    """

    route: Route = Field(description="The decision: tasks, similarities, adapters, weights.")
    routing_text: str = Field(description="The text the router saw (empty for an override).")
    source: RoutingSource = Field(
        description="Where the routing text came from: the query engine's question, the last "
        "user message, the whole prompt, or a per-call override."
    )
    model_name: str = Field(default="", description="Base model that generates with the route.")

    @classmethod
    def class_name(cls) -> str:
        return "LoRAuterRouteEvent"
