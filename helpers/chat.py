"""Chat templates, the end-of-turn and stop tokens, and a pad token that is safe to train with."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
# The structure of Llama 3.2 Instruct's own template (without its tool-calling parts), written for this
# course: a system header that always states a knowledge cutoff and today's date, then the system message (a
# leading system message is moved there), then each turn. It has no {% generation %} markers: TRL masks the
# prompt by rendering it alone (completion_only_loss), which works with any template whose prompt is a prefix
# of the whole.
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
    "tokenizer.chat_template = helpers.chat.CHAT_TEMPLATE."
)
# Llama 3.2's own template writes today's date into every prompt; pin it so outputs don't change daily.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}


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
    """The special token a chat template writes after an assistant message (<|eot_id|>, ChatML's <|im_end|>).

    Generation stops on it, and training must teach it (so it may never be the pad token).
    """
    text = _rendered_exchange(tokenizer)
    after = text[text.rindex(_REPLY) + len(_REPLY) :]
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials = added | set(tokenizer.all_special_tokens)
    found = sorted((after.find(t), -len(t), t) for t in specials if t and t in after)
    if not found:
        raise ValueError(
            "The chat template writes no special token after an assistant message, "
            "so generation could not stop at the end of a reply. "
            "Use a chat model's tokenizer (its template ends each turn with a special token)."
        )
    return found[0][2]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids generation stops on: the end of turn, then the end of sequence and Llama 3's end tokens.

    Llama 3's: end of message (after tool calls) and end of text, where the vocabulary has them.
    """
    vocab = tokenizer.get_vocab()
    ids = [vocab[end_of_turn(tokenizer)]]
    for token in (tokenizer.eos_token, "<|eom_id|>", "<|end_of_text|>"):
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


NEW_PAD_TOKEN = "<|pad|>"  # the pad token added where a vocabulary has none that can pad safely


def safe_pad_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A token that can pad: in the vocabulary, not a stop token or the start of text, unused by the template.

    Llama 3's reserved <|finetune_right_pad_id|> first; None when no token can (add one with add_pad_token).
    """
    vocab, stops = tokenizer.get_vocab(), set(stop_token_ids(tokenizer))
    rendered = _rendered_exchange(tokenizer)
    candidates = (
        PAD_TOKEN, tokenizer.pad_token, "<|endoftext|>", "<pad>", "[PAD]", NEW_PAD_TOKEN, tokenizer.unk_token
    )
    for token in candidates:
        if (
            token
            and token in vocab
            and vocab[token] not in stops
            and token != tokenizer.bos_token
            and token not in rendered
        ):
            return token
    return None


def add_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Where load_tokenizer found no safe pad, add <|pad|>; grow the embedding if the tokenizer outgrew it.

    The notebooks write these steps out in section 2; scripts call this. Returns whether the embedding grew.
    """
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer))
    return True
