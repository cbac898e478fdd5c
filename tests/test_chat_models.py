"""Another chat model than Llama 3: a tiny model with a ChatML template (<|im_start|>/<|im_end|>).

It has pad = eos, as SmolLM2 and Qwen ship it, and is built here like the tiny Llama: its own tokenizer,
nothing downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import test_foreign_data
import test_precision
import test_serve
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helpers import ROOT
from helpers.chat import (
    CHAT_TEMPLATE_KWARGS,
    add_pad_token,
    end_of_turn,
    load_tokenizer,
    safe_pad_token,
    stop_token_ids,
)
from helpers.checks import check_special_tokens
from helpers.data import load_support, to_conversational
from helpers.masking import tokenize_with_mask

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]  # <|im_end|> is id 0


def build_chatml_model(folder, special: list[str] = SPECIAL) -> str:
    """A 2-layer Llama body with a ChatML tokenizer trained on the course's data; pad = eos = <|im_end|>.
    Its embedding has one row per token: no row to spare."""
    rows = [
        json.loads(line)
        for line in (ROOT / "data" / "support" / "train.jsonl").read_text().splitlines()[:800]
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["prompt"] for r in rows] + [r["completion"] for r in rows], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        model_max_length=512)
    tokenizer.chat_template = CHATML
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=end,
        pad_token_id=end,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=end)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> str:
    return build_chatml_model(tmp_path_factory.mktemp("chatml-model"))


@pytest.fixture(scope="module")
def chatml_no_pad(tmp_path_factory) -> str:
    """As chatml, without <|endoftext|>: no token in its vocabulary can pad safely."""
    return build_chatml_model(
        tmp_path_factory.mktemp("chatml-no-pad"), special=["<|im_end|>", "<|im_start|>"]
    )


def test_end_of_turn_stops_and_pad_come_from_the_tokenizer(chatml):
    tokenizer = load_tokenizer(chatml)
    assert end_of_turn(tokenizer) == "<|im_end|>"
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer.pad_token == "<|endoftext|>", (
        "pad = eos as shipped: padding would be the end of turn; another pad"
    )
    # Llama 3's choices are what it derives
    llama = load_tokenizer(str(ROOT / "models" / "tiny-llama-support"))
    assert end_of_turn(llama) == "<|eot_id|>" and llama.pad_token == "<|finetune_right_pad_id|>"


def test_a_model_with_no_safe_pad_gets_the_fix(chatml_no_pad):
    """load_tokenizer leaves no pad; the check names the fix; add_pad_token applies it as the notebooks do."""
    tokenizer = load_tokenizer(chatml_no_pad)
    assert safe_pad_token(tokenizer) is None and tokenizer.pad_token is None
    model = LlamaForCausalLM.from_pretrained(chatml_no_pad)
    with pytest.raises(
        ValueError, match=r"no pad token.*add_special_tokens\(\{'pad_token'.*resize_token_embeddings"
    ):
        check_special_tokens(model, tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    assert add_pad_token(model, tokenizer) is True  # no row to spare: the embedding grew by one
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == rows
    assert model.get_input_embeddings().num_embeddings == rows + 1 == model.config.vocab_size
    model.config.pad_token_id = tokenizer.pad_token_id
    check_special_tokens(model, tokenizer)
    assert add_pad_token(model, tokenizer) is False  # once is enough
    spare = LlamaForCausalLM.from_pretrained(chatml_no_pad)
    spare.resize_token_embeddings(rows + 8)  # a model with rows to spare, as many ship
    fresh = load_tokenizer(chatml_no_pad)
    assert add_pad_token(spare, fresh) is False and fresh.pad_token == "<|pad|>"
    assert spare.get_input_embeddings().num_embeddings == rows + 8


def test_the_answer_mask_equals_trls_labels(chatml):
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(chatml)
    data = to_conversational(load_support({"train": 6})["train"], chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    args = SFTConfig(output_dir="unused", use_cpu=True, report_to="none", max_length=512)
    trainer = SFTTrainer(model=LlamaForCausalLM.from_pretrained(chatml), args=args, train_dataset=data,
                         processing_class=tokenizer)
    for row, example in zip(trainer.train_dataset, data, strict=True):
        ids, labels = tokenize_with_mask(tokenizer, example)
        assert row["labels"] == labels and row["input_ids"] == ids
        answer = tokenizer.decode([t for t in labels if t != -100])
        assert answer.startswith("category:") and "<|im_end|>" in answer


def test_generation_stops_at_its_end_of_turn(chatml):
    tokenizer = load_tokenizer(chatml)
    model = LlamaForCausalLM.from_pretrained(chatml)
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: greedy picks id 0, <|im_end|>
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(tokenizer),
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 1  # one token, the end of turn, then it stopped


CHECKS = "every answer ends with a learned end-of-turn"  # section 3's checks cell, in notebooks 1 to 3
NO_BOS = "every example has exactly one BOS: none to count, this template writes no BOS"


def assert_chatml_checks(text: str) -> None:
    """Section 3's checks on a ChatML model: no BOS to count, and a learned <|im_end|>; never a False."""
    assert NO_BOS in text and "every answer ends with a learned end-of-turn: True" in text, text
    assert "False" not in text, text


@pytest.mark.parametrize("name", ["01_full_finetuning.ipynb", "02_lora.ipynb", "03_qlora.ipynb"])
def test_section_3_checks_use_the_tokenizers_own_tokens(name, chatml, capsys):
    """The checks cell (run here without a kernel) on the Llama tokenizer prints the stored lines.

    On ChatML, with no BOS or with <|im_start|> named as BOS (it opens every turn): "writes no BOS" and a
    learned <|im_end|>.
    """
    llama = load_tokenizer(str(ROOT / "models" / "tiny-llama-support"))
    chat = load_tokenizer(chatml)
    opens_turns = load_tokenizer(chatml)
    opens_turns.bos_token = "<|im_start|>"
    for tokenizer in (llama, chat, opens_turns):
        namespace = {
            "DATA": "support",
            "COLUMN_MAP": None,
            "TRAIN_EXAMPLES": 8,
            "EVAL_EXAMPLES": 4,
            "TEST_EXAMPLES": 2,
            "MAX_LENGTH": 256,
            "tokenizer": tokenizer,
            "turn_end": end_of_turn(tokenizer),
            "tokenize_with_mask": tokenize_with_mask,
        }
        capsys.readouterr()
        test_precision.run_cells(name, ["raw = load_dataset_any(", CHECKS], namespace)
        printed = capsys.readouterr().out
        if tokenizer is llama:
            assert (
                "every example has exactly one BOS: True\nevery answer ends with a learned end-of-turn: True"
                in printed
            )
        else:
            assert_chatml_checks(printed)


def test_notebook_2_runs_to_the_end_on_a_chatml_model(chatml_no_pad, tmp_path):
    """The ChatML model with no safe pad: section 2 adds <|pad|>; the adapter saves, reloads and merges."""
    done, summary, nb = test_foreign_data.run_notebook_2(tmp_path, "support", COURSE_PROFILE="hub",
                                                         COURSE_MODEL_ID=chatml_no_pad)
    assert done.returncode == 0 and summary["ok"], done.stdout[-3000:] + done.stderr[-3000:]
    loaded = test_foreign_data.cell_text(nb, "model.resize_token_embeddings(len(tokenizer))")
    assert "pad '<|pad|>' (id 1200), end of turn '<|im_end|>' (id 0)" in loaded, loaded
    assert_chatml_checks(test_foreign_data.cell_text(nb, CHECKS))
    results = json.loads((tmp_path / "results" / "lora.json").read_text())
    assert results["profile"] == "hub" and results["model_id"] == chatml_no_pad
    with safe_open(tmp_path / "outputs" / "lora-adapter" / "adapter_model.safetensors", "pt") as adapter:
        saved = set(adapter.keys())  # PEFT saw the grown vocabulary and saved the embedding with the adapter
    assert {"base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"} <= saved


@pytest.mark.parametrize("notebook", ["01_full_finetuning", "03_qlora"])
def test_notebooks_1_and_3_add_the_pad_token_as_notebook_2(notebook, chatml_no_pad, tmp_path):
    """The same section 2 in the other two: full fine-tuning saves the grown embedding; QLoRA grows it on the
    4-bit model, and its reload and the three merges grow theirs to match."""
    done, summary, executed = test_foreign_data.run_notebook_2(
        tmp_path, "support", notebook, COURSE_PROFILE="hub", COURSE_MODEL_ID=chatml_no_pad
    )
    assert done.returncode == 0 and summary["ok"], done.stdout[-3000:] + done.stderr[-3000:]
    loaded = test_foreign_data.cell_text(executed, "model.resize_token_embeddings(len(tokenizer))")
    assert "pad '<|pad|>' (id 1200)" in loaded, loaded
    assert_chatml_checks(test_foreign_data.cell_text(executed, CHECKS))


def test_the_training_script_trains_a_chatml_model(chatml_no_pad, tmp_path):
    """scripts/train.py, hub profile, a local ChatML folder: the same recipe, its own special tokens.

    The pad token is added as notebook 2 adds it.
    """
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--method",
        "lora",
        "--profile",
        "hub",
        "--model-id",
        chatml_no_pad,
        "--train-examples",
        "16",
        "--eval-examples",
        "4",
        "--test-examples",
        "2",
        "--max-steps",
        "2",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert "eval loss" in done.stdout


def test_the_local_api_answers_for_a_chatml_model(chatml, tmp_path):
    """scripts/serve.py on the ChatML folder: a reply, and a clean 400 naming the field for a bad role."""
    with test_serve.serving(chatml, tmp_path / "server.log") as base:
        url = f"{base}/chat/completions"
        good = {
            "model": chatml,
            "messages": [{"role": "user", "content": "Where is order 48213?"}],
            "max_tokens": 4,
        }
        status, body = test_serve.post(url, json.dumps(good).encode())
        assert status == 200 and isinstance(json.loads(body)["choices"][0]["message"]["content"], str), body
        bad = {**good, "messages": [{"role": "boss", "content": "hi"}]}
        status, body = test_serve.post(url, json.dumps(bad).encode())
        assert status == 400 and json.loads(body)["error"]["param"] == "messages[0].role"
