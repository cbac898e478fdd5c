"""Run profiles, model configurations and tokenizer set-up: where the model comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from helpers import ROOT
from helpers.artifacts import atomic_dir

TINY_MODEL_DIR = ROOT / "models" / "tiny-llama-support"
CACHE_DIR = Path.home() / ".cache" / "llama-finetuning-course"  # where stand-in models are built (the default)
DEFAULT_HUB_ID = "meta-llama/Llama-3.2-1B-Instruct"  # the "hub" profile's model unless MODEL_ID names another
_PROFILES = ("hub", "tiny", "llama-3.2-1b-random")
_ALIASES = {"llama-3.2-1b": "hub"}  # the hub profile's earlier name

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
# The structure of Llama 3.2 Instruct's own template (without its tool-calling parts), written for this course:
# a system header that always states a knowledge cutoff and today's date, then the system message (a leading
# system message is moved there), then each turn. It has no {% generation %} markers: TRL masks the prompt by
# rendering it alone (completion_only_loss), which works with any template whose prompt is a prefix of the whole.
LLAMA_3_2_STYLE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if date_string is not defined %}"
    "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# The error for a tokenizer without a chat template, shared by load_tokenizer and the guards.
NO_TEMPLATE_HELP = (
    "has no chat template (base checkpoints ship none). Use the -Instruct model id, or set "
    "tokenizer.chat_template = helpers.models.CHAT_TEMPLATE."
)
# Llama 3.2's own template writes today's date into every prompt; pin it so outputs don't change daily.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}

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


@dataclass(frozen=True)
class ModelChoice:
    """What a run trains: its profile, where from_pretrained loads it, and an honest description."""

    profile: str
    path: str
    name: str
    description: str
    accuracy_means_something: bool


def resolve_profile(requested: str, cuda_available: bool | None = None) -> str:
    """The run profile: the one requested, or for 'auto' the hub model on a CUDA GPU and the tiny one elsewhere."""
    profile = _ALIASES.get(requested, requested)
    if profile == "auto":
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        profile = "hub" if cuda_available else "tiny"
    if profile not in _PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}. Choose one of {', '.join(_PROFILES)} or 'auto' "
            "('hub': MODEL_ID, any chat model on the hub or in a local folder, Llama 3.2 1B Instruct by default) "
            "(set PROFILE in the parameters cell, or the COURSE_PROFILE environment variable it reads)."
        )
    return profile


def choose_model(profile: str, model_id: str | None = None, cache_dir: str | Path | None = None) -> ModelChoice:
    """Return where to load the model of a profile from, building the local ones (in cache_dir) on first use."""
    if profile == "hub":
        hub_id = model_id or DEFAULT_HUB_ID
        where = "a local folder" if Path(hub_id).is_dir() else "from the Hugging Face hub"
        return ModelChoice(profile, hub_id, hub_id, f"{hub_id} ({where}, pretrained weights)", True)
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
        path = Path(cache_dir or CACHE_DIR) / "llama-3.2-1b-random"
        if not is_current_build(path):
            if path.exists():
                print(f"{path} is from an older build of this profile: rebuilding it.")
            build_random_llama_1b(path)
        return ModelChoice(
            profile,
            str(path),
            "llama-3.2-1b-random (local)",
            "Llama 3.2 1B architecture with RANDOM weights: real memory and speed, meaningless accuracy",
            False,
        )
    raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(_PROFILES)}.")


def llama_config(spec: dict, **overrides) -> LlamaConfig:
    """Build a LlamaConfig from one of the literal specs above (LLAMA_3_2_1B or TINY)."""
    return LlamaConfig(**{**spec, **overrides})


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
    vocab.update({f"<|unused_text_token_{i}|>": i for i in range(len(text_tokens), _LLAMA_3_2_FIRST_SPECIAL_ID)})
    merges = [tuple(pair) for pair in tiny_json["model"]["merges"]]
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = tiny.pre_tokenizer
    backend.decoder = tiny.decoder
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_3_2_SPECIAL_TOKENS])
    bos = LLAMA_3_2_SPECIAL_TOKENS[0]
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, _LLAMA_3_2_FIRST_SPECIAL_ID)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=END_OF_TURN,  # as the Instruct tokenizer's config has it; no pad token (load_tokenizer sets it)
        model_max_length=LLAMA_3_2_1B["max_position_embeddings"],
    )
    tokenizer.chat_template = chat_template
    ids = [tokenizer.convert_tokens_to_ids(t) for t in LLAMA_3_2_SPECIAL_TOKENS]
    if len(tokenizer) != LLAMA_3_2_1B["vocab_size"] or ids != list(range(_LLAMA_3_2_FIRST_SPECIAL_ID, len(tokenizer))):
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
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a GPU draws 1.2 B random values in a blink
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


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer and apply the training rules: a pad token that is not a stop token, right padding.

    Where no token in the vocabulary can pad safely, the pad is left unset: add one with add_pad_token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"The tokenizer of {path} {NO_TEMPLATE_HELP}")
    stops = stop_token_ids(tokenizer)
    if tokenizer.pad_token is None or tokenizer.pad_token_id in stops:
        tokenizer.pad_token = safe_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


_REPLY = "Fine"  # the assistant's words in the probe exchange below


def _rendered_exchange(tokenizer: PreTrainedTokenizerBase) -> str:
    """One user message and one assistant reply, as the tokenizer's chat template writes them."""
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": _REPLY}]
    return tokenizer.apply_chat_template(messages, tokenize=False, **CHAT_TEMPLATE_KWARGS)


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special token the chat template writes after an assistant message: Llama 3's <|eot_id|>, ChatML's
    <|im_end|>. Generation stops on it, and training must teach it (so it may never be the pad token)."""
    text = _rendered_exchange(tokenizer)
    after = text[text.rindex(_REPLY) + len(_REPLY) :]
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special} | set(tokenizer.all_special_tokens)
    found = sorted((after.find(t), -len(t), t) for t in specials if t and t in after)
    if not found:
        raise ValueError(
            "The chat template writes no special token after an assistant message, so generation could not stop "
            "at the end of a reply. Use a chat model's tokenizer (its template ends each turn with a special token)."
        )
    return found[0][2]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids generation stops on: the end of turn, then the tokenizer's end of sequence, and Llama 3's end of
    message (after tool calls) and end of text where the vocabulary has them."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[end_of_turn(tokenizer)]]
    for token in (tokenizer.eos_token, "<|eom_id|>", "<|end_of_text|>"):
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


NEW_PAD_TOKEN = "<|pad|>"  # the pad token added where a vocabulary has none that can pad safely


def safe_pad_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A token that can pad: in the vocabulary, not a stop token, not the start of text, not written by the chat
    template. Llama 3's reserved <|finetune_right_pad_id|> first; None when no token can (add one: add_pad_token)."""
    vocab, stops = tokenizer.get_vocab(), set(stop_token_ids(tokenizer))
    rendered = _rendered_exchange(tokenizer)
    for token in (PAD_TOKEN, tokenizer.pad_token, "<|endoftext|>", "<pad>", "[PAD]", NEW_PAD_TOKEN, tokenizer.unk_token):
        if token and token in vocab and vocab[token] not in stops and token != tokenizer.bos_token and token not in rendered:
            return token
    return None


def add_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Where load_tokenizer found no safe pad, add <|pad|>; grow the embedding if the tokenizer outgrew it.

    The training notebooks write these steps in section 2; scripts call this. Returns whether the embedding grew."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer))
    return True


def keep_4bit_layers_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes' CPU inference repacking of 4-bit weights, which breaks backprop; return layers changed.

    bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks a Linear4bit's weight into an inference-only layout at
    its first forward pass without gradients (e.g. an evaluation before training). Afterwards its matmul has no
    backward: gradients stop at every 4-bit layer, so the LoRA matrices below the last layer never learn
    (PyTorch only warns "bitsandbytes::gemv_4bit: an autograd kernel was not registered"). No effect on GPUs.
    """
    import bitsandbytes

    changed = 0
    for module in model.modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
