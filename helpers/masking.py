"""Masking: token ids of a conversation and labels that train on the answer only, as TRL builds them."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from helpers.chat import CHAT_TEMPLATE_KWARGS


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kwargs) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template (one BOS, from the template)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, **CHAT_TEMPLATE_KWARGS, **kwargs
    )
    return list(out["input_ids"])


def tokenize_with_mask(tokenizer: PreTrainedTokenizerBase, example: dict) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion and labels with the prompt masked (-100), as TRL builds them."""
    prompt_ids = chat_ids(tokenizer, example["prompt"], add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, example["prompt"] + example["completion"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "The chat template renders the prompt differently alone and with the answer; fix the template."
        )
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return full_ids, labels
