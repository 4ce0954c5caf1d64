"""LoRAuterEmbedding: offline LlamaIndex embeddings over the shared local encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex

from lorauter_integrations.encoders import get_encoder
from lorauter_integrations.llama_index import LoRAuterEmbedding


@pytest.fixture(scope="module")
def embed_model() -> LoRAuterEmbedding:
    return LoRAuterEmbedding()


def test_embeddings_are_unit_vectors_of_the_encoder_dimension(embed_model):
    vec = embed_model.get_text_embedding("The cat sat on the mat.")
    assert len(vec) == embed_model.dim == 384
    assert math.isclose(sum(x * x for x in vec), 1.0, rel_tol=1e-4)


def test_query_and_text_embeddings_agree_with_the_shared_encoder(embed_model):
    text = "Translate this sentence into German."
    expected = get_encoder().encode([text])[0]
    assert embed_model.get_query_embedding(text) == pytest.approx(expected.tolist(), abs=1e-5)
    assert embed_model.get_text_embedding_batch([text, "other"])[0] == pytest.approx(expected.tolist(), abs=1e-5)


async def test_async_embeddings_equal_sync_embeddings(embed_model):
    texts = ["first text", "second text"]
    np.testing.assert_allclose(
        await embed_model.aget_text_embedding_batch(texts), embed_model.get_text_embedding_batch(texts), atol=1e-6
    )
    assert await embed_model.aget_query_embedding("q") == pytest.approx(embed_model.get_query_embedding("q"), abs=1e-6)


def test_vector_store_index_retrieves_the_relevant_document_offline(embed_model):
    docs = [
        Document(text="The Eiffel Tower is a wrought-iron tower in Paris, France.", doc_id="paris"),
        Document(text="Photosynthesis converts light energy into chemical energy in plants.", doc_id="plants"),
        Document(text="The stock market fell sharply after the interest rate decision.", doc_id="markets"),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    hits = index.as_retriever(similarity_top_k=1).retrieve("How do plants turn sunlight into energy?")
    assert [h.node.ref_doc_id for h in hits] == ["plants"]
