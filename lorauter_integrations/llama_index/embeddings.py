"""`LoRAuterEmbedding`: LlamaIndex embeddings over the package's local sentence encoder.

LlamaIndex's default embedding model is OpenAI's; with this one an index, a retriever and a
query engine run fully offline, and share the encoder (and its memory) with the router.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from ..encoders import DEFAULT_ENCODER, SentenceEncoder, get_encoder


class LoRAuterEmbedding(BaseEmbedding):
    """Unit-norm sentence embeddings from `lorauter_integrations.encoders.get_encoder`.

    Example:
        >>> from llama_index.core import Settings, VectorStoreIndex, Document
        >>> Settings.embed_model = LoRAuterEmbedding()
        >>> index = VectorStoreIndex.from_documents([Document(text="Paris is in France.")])
    """

    model_name: str = Field(
        default=DEFAULT_ENCODER,
        description="Sentence-transformers model: a packaged name or a local folder.",
    )
    device: str | None = Field(default=None, description="Torch device; None picks CUDA when present.")

    _encoder: SentenceEncoder = PrivateAttr()

    def __init__(self, model_name: str = DEFAULT_ENCODER, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(model_name=model_name, device=device, **kwargs)
        # The process-wide encoder: the router already holds it, loading a second costs ~90 MB.
        self._encoder = get_encoder(model_name, device)

    @classmethod
    def class_name(cls) -> str:
        return "LoRAuterEmbedding"

    @property
    def dim(self) -> int:
        """Length of every embedding vector."""
        return self._encoder.dim

    def _embed(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.encode(texts).tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    # Encoding is CPU/GPU-bound torch work: run it in a worker thread so the event loop stays free.
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._embed, texts)
