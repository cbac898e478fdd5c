"""Llama shapes as literal dicts, as each model's config.json publishes them, and a LlamaConfig from one."""

from __future__ import annotations

from transformers import LlamaConfig

# The Llama 3.2 1B architecture, as published in its config.json (the Instruct and base models share it).
LLAMA_3_2_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,  # grouped-query attention: 4 query heads share each key/value head
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,  # the output layer reuses the input embedding matrix
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}

# Larger models, for memory estimates only (built on the meta device, never downloaded). Shapes as published
# in each model's config.json; only the fields that decide parameter counts and activation sizes.
LLAMA_3_2_3B = {
    "vocab_size": 128256,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": True,
}
LLAMA_3_1_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": False,  # a separate output layer
}
LLAMA_2_7B = {  # the "7B" of most LoRA tutorials: no grouped-query attention, a 32k vocabulary
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "tie_word_embeddings": False,
}

# The published shapes above by name, as notebook 4 labels them (its sections 5, 6 and 9).
LLAMA_SHAPES = {
    "Llama 3.2 1B": LLAMA_3_2_1B,
    "Llama 3.2 3B": LLAMA_3_2_3B,
    "Llama 3.1 8B": LLAMA_3_1_8B,
    "Llama 2 7B": LLAMA_2_7B,
}

# The same family at a few million parameters (the tiny stand-in): GQA, llama3 RoPE scaling, tied embeddings.
TINY = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}


def llama_config(spec: dict, **overrides) -> LlamaConfig:
    """Build a LlamaConfig from one of the literal specs above (LLAMA_3_2_1B or TINY)."""
    return LlamaConfig(**{**spec, **overrides})
