"""LlamaIndex integration: a routed LLM, its routing event, and offline embeddings."""

from .embeddings import LoRAuterEmbedding

__all__ = ["LoRAuterEmbedding"]
