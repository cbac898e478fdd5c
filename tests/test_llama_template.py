"""The Llama 3.2 Instruct-style chat template (system header with dates, no {% generation %} markers).

Every other test uses the tiny model's simple template; these run masking, TRL's labels, date pinning, the pad
token and length checks through a template shaped like the real model's, on two tokenizers: the tiny one with
its template replaced, and the llama-3.2-1b-random profile's (Llama 3.2's vocabulary size and special ids).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import api_checks
import jinja2
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import chat_template_utils

from helpers.chat import (
    CHAT_TEMPLATE,
    CHAT_TEMPLATE_KWARGS,
    LLAMA_3_2_STYLE_TEMPLATE,
    load_tokenizer,
    stop_token_ids,
)
from helpers.data import check_lengths, load_support, to_conversational
from helpers.masking import tokenize_with_mask
from helpers.shapes import LLAMA_3_2_1B, llama_config
from helpers.stand_in import SHRUNK_BODY, TINY_MODEL_DIR, llama_3_2_tokenizer

PINNED_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
SYSTEM_PROMPT = "You are a support assistant. Start with the category, order and product lines."


@pytest.fixture(scope="module")
def tiny_tok():
    """The tiny tokenizer with Llama 3.2's template structure instead of its own."""
    tok = load_tokenizer(str(TINY_MODEL_DIR))
    tok.chat_template = LLAMA_3_2_STYLE_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random-1b-tokenizer")
    llama_3_2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def random_tok(random_dir):
    """The llama-3.2-1b-random profile's tokenizer, loaded the way the notebooks load it."""
    return load_tokenizer(str(random_dir))


@pytest.fixture(params=["tiny", "random-1b"])
def tok_and_model(request, tiny_tok, random_tok):
    """(tokenizer, a model with a matching vocabulary) for each of the two tokenizers."""
    torch.manual_seed(0)
    if request.param == "tiny":
        return tiny_tok, AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    return random_tok, AutoModelForCausalLM.from_config(
        llama_config(LLAMA_3_2_1B, **SHRUNK_BODY, pad_token_id=128004)
    )


@pytest.fixture(scope="module")
def raw():
    return load_support({"train": 3})["train"]


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_template_has_the_llama_3_2_structure(tiny_tok):
    messages = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Where is order 48213?\n"},
        {"role": "assistant", "content": "category: shipping"},
    ]
    text = tiny_tok.apply_chat_template(messages, tokenize=False, **CHAT_TEMPLATE_KWARGS)
    assert text == (
        PINNED_HEADER + "Be brief.<|eot_id|>"  # the leading system message goes into the header, trimmed
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is order 48213?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\ncategory: shipping<|eot_id|>"
    )
    prompt = tiny_tok.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
    )
    assert prompt == (
        PINNED_HEADER + "<|eot_id|>"  # no system message: the header is still written, with both dates
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is order 48213?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert re.search(r"\{%-?\s*generation", CHAT_TEMPLATE)  # the tiny template marks the answer ...
    assert not re.search(r"\{%-?\s*generation", LLAMA_3_2_STYLE_TEMPLATE)  # ... the real one does not
    # the template without transformers' strftime_now (e.g. plain Jinja) falls back to a fixed date
    plain = jinja2.Environment().from_string(LLAMA_3_2_STYLE_TEMPLATE)
    assert plain.render(messages=messages[1:2], bos_token="<|begin_of_text|>").startswith(PINNED_HEADER)


@pytest.mark.parametrize("system_prompt", [None, SYSTEM_PROMPT], ids=["no-system", "system"])
@pytest.mark.parametrize("which", ["tiny", "random-1b"])
def test_mask_covers_system_header_user_turn_and_assistant_header(
    which, system_prompt, tiny_tok, random_tok, raw
):
    tok = tiny_tok if which == "tiny" else random_tok
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    examples = to_conversational(raw, system_prompt=system_prompt, chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    for ex, original in zip(examples, raw, strict=True):
        ids, labels = tokenize_with_mask(tok, ex)
        n_prompt = labels.count(-100)
        prompt_text = (
            PINNED_HEADER
            + (system_prompt or "")
            + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            + original["prompt"].strip()
            + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        assert ids[:n_prompt] == ids_of(tok, prompt_text)  # exactly the prompt is masked ...
        assert labels[:n_prompt] == [-100] * n_prompt
        assert (
            labels[n_prompt:] == ids[n_prompt:] == ids_of(tok, original["completion"].strip() + "<|eot_id|>")
        )
        assert labels[-1] == eot  # ... and the answer is trained on, up to and including its end of turn
        api_checks.check_one_bos(ids, tok)


def test_trl_builds_the_same_labels_through_this_template(tok_and_model, raw, tmp_path):
    from trl import SFTConfig, SFTTrainer

    tok, model = tok_and_model
    examples = to_conversational(raw, system_prompt=SYSTEM_PROMPT, chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=512, completion_only_loss=True
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=examples, processing_class=tok)
    assert len(trainer.train_dataset) == len(examples)
    for row, ex in zip(trainer.train_dataset, examples, strict=True):
        ids, labels = tokenize_with_mask(tok, ex)
        assert row["labels"] == labels
        # labels alone would match with any date: the prompt's labels are all -100
        assert row["input_ids"] == ids
    # TRL carried the pinned date from the examples' chat_template_kwargs into tokenization
    assert "Today Date: 26 Jul 2024\n\n" + SYSTEM_PROMPT in tok.decode(trainer.train_dataset[0]["input_ids"])
    assert tok.pad_token == "<|finetune_right_pad_id|>"  # TRL kept the course's pad token


def test_pinned_date_is_stable_and_unpinned_date_is_today(tiny_tok, monkeypatch):
    messages = [{"role": "user", "content": "Where is order 48213?"}]

    def render(**kwargs) -> str:
        return tiny_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    first, second = render(**CHAT_TEMPLATE_KWARGS), render(**CHAT_TEMPLATE_KWARGS)
    assert "Today Date: 26 Jul 2024\n" in first and first == second
    before = datetime.now().strftime("%d %b %Y")
    unpinned = render()
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}\n" in unpinned or f"Today Date: {after}\n" in unpinned

    def ids_on(day: int, **kwargs) -> list[int]:
        fake = type("FrozenClock", (), {"now": staticmethod(lambda: datetime(2025, 1, day))})
        monkeypatch.setattr(chat_template_utils, "datetime", fake)
        return tiny_tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    assert ids_on(1) != ids_on(2)  # unpinned: the token ids change from one day to the next
    assert ids_on(1, **CHAT_TEMPLATE_KWARGS) == ids_on(2, **CHAT_TEMPLATE_KWARGS)


def test_guards_on_this_template(tiny_tok, random_tok):
    for tok in (tiny_tok, random_tok):
        with pytest.raises(ValueError, match=r"writes today's date.*CHAT_TEMPLATE_KWARGS"):
            api_checks.check_template_pinned(tok, {})
        api_checks.check_template_pinned(tok, CHAT_TEMPLATE_KWARGS)
        messages = [{"role": "user", "content": "Where is order 48213?"}]
        text = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
        )
        assert text.startswith("<|begin_of_text|>")
        with pytest.raises(ValueError, match=r"found it at positions \[0, 1\]"):
            api_checks.check_one_bos(tok(text)["input_ids"], tok)  # the template's BOS plus the tokenizer's
        api_checks.check_one_bos(ids_of(tok, text), tok)
    simple = load_tokenizer(str(TINY_MODEL_DIR))
    assert simple.chat_template == CHAT_TEMPLATE
    api_checks.check_template_pinned(simple, {})  # a template without a date needs no pin


def test_pad_token_is_not_end_of_turn_or_a_stop_id(random_tok, random_dir):
    assert "pad_token" not in json.loads((random_dir / "tokenizer_config.json").read_text())
    assert (random_tok.pad_token, random_tok.pad_token_id) == ("<|finetune_right_pad_id|>", 128004)
    assert (random_tok.eos_token, random_tok.eos_token_id) == ("<|eot_id|>", 128009)
    assert stop_token_ids(random_tok) == [128009, 128008, 128001]
    assert random_tok.pad_token_id not in stop_token_ids(random_tok)
    assert random_tok.padding_side == "right"


def test_check_lengths_counts_the_system_header(tiny_tok, raw):
    simple = load_tokenizer(str(TINY_MODEL_DIR))
    one = to_conversational(raw.select([0]), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    short = check_lengths(one, simple, 10_000)["max"]
    full = check_lengths(one, tiny_tok, 10_000)["max"]
    header = len(ids_of(tiny_tok, PINNED_HEADER + "<|eot_id|>")) - 1  # the BOS is counted in both
    assert full - short == header and header > 20
    check_lengths(one, simple, short)  # fits under the simple template ...
    reported = rf"1 of 1 examples are longer than max_length={short} tokens \(longest: {full} tokens"
    with pytest.raises(ValueError, match=reported):
        check_lengths(one, tiny_tok, short)  # ... but not once the system header is written
