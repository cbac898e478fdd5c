"""Run profiles, model configurations and tokenizer set-up: where the model comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

from helpers.artifacts import save_dir_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL_DIR = REPO_ROOT / "models" / "tiny-llama-support"
CACHE_DIR = Path(os.environ.get("COURSE_CACHE_DIR", Path.home() / ".cache" / "llama-finetuning-course"))
PROFILE_ENV_VAR = "COURSE_PROFILE"
MODEL_ID_ENV_VAR = "COURSE_MODEL_ID"
DEFAULT_HUB_ID = "meta-llama/Llama-3.2-1B-Instruct"
PROFILES = ("llama-3.2-1b", "tiny", "llama-3.2-1b-random")

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

# The same family at a few million parameters: GQA, llama3 RoPE scaling, tied embeddings.
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

# Llama-3-style special tokens; the tiny tokenizer reserves the same names.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
]
PAD_TOKEN = "<|finetune_right_pad_id|>"
END_OF_TURN = "<|eot_id|>"

# A Llama-3-style chat template. {% generation %} marks what the assistant says, so loss can be masked to it.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Llama 3.2's own template writes today's date into every prompt; pin it so outputs don't change daily.
# The error for a tokenizer without a chat template, shared by load_tokenizer and the guards.
NO_TEMPLATE_HELP = (
    "has no chat template (base checkpoints ship none). Use the -Instruct model id, or set "
    "tokenizer.chat_template = helpers.models.CHAT_TEMPLATE."
)
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}


@dataclass(frozen=True)
class ModelChoice:
    """What a run trains: its profile, where from_pretrained loads it, and an honest description."""

    profile: str
    path: str
    name: str
    description: str
    accuracy_means_something: bool


def resolve_profile(requested: str, cuda_available: bool | None = None) -> str:
    """Pick the run profile: the COURSE_PROFILE variable wins, then the notebook's value; 'auto' goes by hardware."""
    profile = os.environ.get(PROFILE_ENV_VAR) or requested
    if profile == "auto":
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        profile = "llama-3.2-1b" if cuda_available else "tiny"
    if profile not in PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}. Choose one of {', '.join(PROFILES)} or 'auto' "
            f"(set it in the parameters cell or with the {PROFILE_ENV_VAR} environment variable)."
        )
    return profile


def choose_model(profile: str, model_id: str | None = None) -> ModelChoice:
    """Return where to load the model of a profile from, building the local ones on first use."""
    if profile == "llama-3.2-1b":
        hub_id = os.environ.get(MODEL_ID_ENV_VAR) or model_id or DEFAULT_HUB_ID
        return ModelChoice(profile, hub_id, hub_id, f"{hub_id} from the Hugging Face hub (pretrained weights)", True)
    if profile == "tiny":
        if not (TINY_MODEL_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"The tiny model is missing from {TINY_MODEL_DIR}. Rebuild it with: python scripts/build_tiny_model.py"
            )
        return ModelChoice(
            profile,
            str(TINY_MODEL_DIR),
            "tiny-llama-support (local)",
            "tiny Llama (4 M parameters, same architecture family), briefly pretrained on this course's text",
            True,
        )
    if profile == "llama-3.2-1b-random":
        path = CACHE_DIR / "llama-3.2-1b-random"
        if not (path / "config.json").exists():
            build_random_llama_1b(path)
        return ModelChoice(
            profile,
            str(path),
            "llama-3.2-1b-random (local)",
            "Llama 3.2 1B architecture with RANDOM weights: real memory and speed, meaningless accuracy",
            False,
        )
    raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")


def llama_config(spec: dict, **overrides) -> LlamaConfig:
    """Build a LlamaConfig from one of the literal specs above (LLAMA_3_2_1B or TINY)."""
    return LlamaConfig(**{**spec, **overrides})


def build_random_llama_1b(path: Path) -> Path:
    """Save Llama 3.2 1B's architecture with random bf16 weights and the tiny tokenizer, for memory studies."""
    from transformers import LlamaForCausalLM

    tokenizer = load_tokenizer(str(TINY_MODEL_DIR))
    config = llama_config(LLAMA_3_2_1B, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    return save_dir_atomic(path, lambda folder: (model.save_pretrained(folder), tokenizer.save_pretrained(folder)))


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer and apply the training rules: a pad token distinct from end-of-turn, right padding."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"The tokenizer of {path} {NO_TEMPLATE_HELP}")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(END_OF_TURN):
        if PAD_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"{path}: no pad token and no {PAD_TOKEN} in the vocabulary; add a pad token first.")
        tokenizer.pad_token = PAD_TOKEN
    if tokenizer.pad_token_id in stop_token_ids(tokenizer):
        raise ValueError("The pad token equals a stop token: the model would never learn to stop.")
    tokenizer.padding_side = "right"
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids generation should stop on: end of turn and end of text."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in (END_OF_TURN, "<|end_of_text|>") if t in vocab]
