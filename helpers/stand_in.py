"""The stand-in models: the tiny Llama in models/, and Llama 3.2 1B's shape with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from helpers import ROOT
from helpers.artifacts import atomic_dir
from helpers.chat import END_OF_TURN, LLAMA_3_2_STYLE_TEMPLATE, PAD_TOKEN
from helpers.shapes import LLAMA_3_2_1B, llama_config

TINY_MODEL_DIR = ROOT / "models" / "tiny-llama-support"

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

# Llama 3.2's 256 special tokens, ids 128000..128255, in order (as in the Instruct tokenizer).
_LLAMA_3_2_FIRST_SPECIAL_ID = 128000
LLAMA_3_2_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model stops here after a tool call
    "<|eot_id|>",
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]

# The random-1B folder is rebuilt when its marker is missing or older (folders from earlier builds paired the
# 1B config with the tiny tokenizer, which the special-token guard refuses).
RANDOM_1B_BUILD_VERSION = 2
BUILD_MARKER = "course_build.json"
# Llama 3.2 1B's vocabulary and special tokens on a toy body: what tests build instead of the 2.5 GB model.
SHRUNK_BODY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def llama_3_2_tokenizer(chat_template: str = LLAMA_3_2_STYLE_TEMPLATE) -> PreTrainedTokenizerFast:
    """A tokenizer with Llama 3.2's size and special-token ids, reusing the tiny tokenizer's BPE for text.

    Ids 0.. are the tiny tokenizer's text tokens (in their order), the rest up to 127999 are placeholders that
    no text ever produces, and 128000..128255 are Llama 3.2's special tokens. Built the same way every time.
    """
    source = TINY_MODEL_DIR / "tokenizer.json"
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing. Rebuild it with: python scripts/build_tiny_model.py")
    tiny = Tokenizer.from_file(str(source))
    tiny_json = json.loads(tiny.to_str())
    tiny_specials = {t["content"] for t in tiny_json["added_tokens"]}
    unknown = tiny_specials - set(LLAMA_3_2_SPECIAL_TOKENS)
    if unknown:
        raise ValueError(f"The tiny tokenizer has special tokens Llama 3.2 lacks: {sorted(unknown)}.")
    by_id = sorted(tiny_json["model"]["vocab"].items(), key=lambda item: item[1])
    text_tokens = [token for token, _ in by_id if token not in tiny_specials]
    vocab = {token: i for i, token in enumerate(text_tokens)}
    unused = range(len(text_tokens), _LLAMA_3_2_FIRST_SPECIAL_ID)
    vocab.update({f"<|unused_text_token_{i}|>": i for i in unused})
    merges = [tuple(pair) for pair in tiny_json["model"]["merges"]]
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = tiny.pre_tokenizer
    backend.decoder = tiny.decoder
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in LLAMA_3_2_SPECIAL_TOKENS]
    )
    bos = LLAMA_3_2_SPECIAL_TOKENS[0]
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, _LLAMA_3_2_FIRST_SPECIAL_ID)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        # as the Instruct tokenizer's config has it; no pad token (load_tokenizer sets it)
        eos_token=END_OF_TURN,
        model_max_length=LLAMA_3_2_1B["max_position_embeddings"],
    )
    tokenizer.chat_template = chat_template
    ids = [tokenizer.convert_tokens_to_ids(t) for t in LLAMA_3_2_SPECIAL_TOKENS]
    expected_ids = list(range(_LLAMA_3_2_FIRST_SPECIAL_ID, len(tokenizer)))
    if len(tokenizer) != LLAMA_3_2_1B["vocab_size"] or ids != expected_ids:
        raise RuntimeError("The Llama 3.2 tokenizer was built with the wrong size or special-token ids.")
    return tokenizer


def build_random_llama(path: Path, **body) -> Path:
    """Save Llama 3.2 1B's configuration with random bf16 weights and a tokenizer with Llama 3.2's ids.

    body overrides the shape (e.g. SHRUNK_BODY for tests); vocabulary and special-token ids stay Llama 3.2's.
    """
    fixed = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"} & set(body)
    if fixed:
        raise ValueError(f"{sorted(fixed)} must stay Llama 3.2's; only the body's shape can change.")
    tokenizer = llama_3_2_tokenizer()
    config = llama_config(LLAMA_3_2_1B, pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN), **body)
    torch.manual_seed(0)
    # a GPU draws 1.2 B random values in a blink
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    marker = {"version": RANDOM_1B_BUILD_VERSION, "vocab_size": len(tokenizer), "body": body}

    with atomic_dir(path) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / BUILD_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    return path


def build_random_llama_1b(path: Path) -> Path:
    """Save Llama 3.2 1B's architecture with random bf16 weights (2.5 GB), for memory and speed studies."""
    return build_random_llama(path)


def is_current_build(path: Path, **body) -> bool:
    """Whether path holds a random model written by this version of build_random_llama, with this body."""
    try:
        marker = json.loads((path / BUILD_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    current = marker.get("version") == RANDOM_1B_BUILD_VERSION and marker.get("body") == body
    return current and (path / "model.safetensors").exists()
