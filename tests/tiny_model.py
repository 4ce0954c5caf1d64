"""The tiny random-weight Llama of the unit tests (no download, milliseconds to build)."""

from __future__ import annotations

TINY_BASE_ID = "tiny-random-llama"
TINY_CONTEXT = 96


def make_tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer random Llama with grouped-query attention (q and v projections differ in shape)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TINY_CONTEXT,
        initializer_range=0.2, tie_word_embeddings=False, eos_token_id=None, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.config.name_or_path = TINY_BASE_ID
    return model
