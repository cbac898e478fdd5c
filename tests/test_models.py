"""Profiles, the tiny model and its tokenizer, loss masking, evaluation and atomic folder saves."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from helpers import models
from helpers.artifacts import save_dir_atomic
from helpers.data import load_support, to_conversational
from helpers.evaluate import eval_loss, generate_replies, tokenize_with_mask
from helpers.models import (
    LLAMA_3_2_1B,
    TINY_MODEL_DIR,
    choose_model,
    llama_config,
    load_tokenizer,
    resolve_profile,
    stop_token_ids,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_MODEL_DIR))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def examples():
    return to_conversational(load_support({"train": 16, "validation": 8, "test": 8}))


def test_profile_env_overrides_notebook_value(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    assert resolve_profile("llama-3.2-1b") == "tiny"


def test_auto_profile_follows_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert resolve_profile("auto", cuda_available=True) == "llama-3.2-1b"
    assert resolve_profile("auto", cuda_available=False) == "tiny"


def test_unknown_profile_lists_the_choices(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    with pytest.raises(ValueError, match=r"Unknown profile 'llama-7b'.*tiny.*COURSE_PROFILE"):
        resolve_profile("llama-7b")


def test_real_profile_uses_hub_id_and_env_override(monkeypatch):
    monkeypatch.delenv("COURSE_MODEL_ID", raising=False)
    assert choose_model("llama-3.2-1b").path == "meta-llama/Llama-3.2-1B-Instruct"
    monkeypatch.setenv("COURSE_MODEL_ID", "someone/llama-3.2-1b-mirror")
    assert choose_model("llama-3.2-1b").path == "someone/llama-3.2-1b-mirror"


def test_missing_tiny_model_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "TINY_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="python scripts/build_tiny_model.py"):
        choose_model("tiny")


def test_llama_3_2_1b_config_has_the_published_parameter_count():
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(LLAMA_3_2_1B))
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400


def test_tiny_model_is_the_same_family(model):
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert cfg.rope_parameters["rope_type"] == "llama3"
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000


def test_tokenizer_pad_is_not_a_stop_token(tokenizer):
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"
    assert tokenizer.pad_token_id not in stop_token_ids(tokenizer)
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.padding_side == "right"


def test_tokenizer_without_template_gets_a_clear_error(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="has no chat template.*-Instruct"):
        load_tokenizer(str(tmp_path))


def test_pad_equal_to_end_of_turn_is_replaced(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"<|finetune_right_pad_id|>"', '"<|eot_id|>"'))
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token == "<|finetune_right_pad_id|>"


def test_generation_stops_on_end_of_turn(model, tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in model.generation_config.eos_token_id


def test_mask_covers_prompt_and_keeps_end_of_turn(tokenizer, examples):
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for ex in examples["train"]:
        ids, labels = tokenize_with_mask(tokenizer, ex)
        n_prompt = labels.count(-100)
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]
        assert labels[-1] == eot
        assert tokenizer.decode(ids[n_prompt:]).startswith("category:")
        assert 0.3 < n_prompt / len(ids) < 0.8


def test_trl_builds_the_same_labels(model, tokenizer, examples, tmp_path):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=examples["train"], processing_class=tokenizer)
    for row, ex in zip(trainer.train_dataset, examples["train"], strict=True):
        assert row["labels"] == tokenize_with_mask(tokenizer, ex)[1]
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"  # TRL must not have replaced it


def test_eval_loss_is_finite_and_batch_size_independent(model, tokenizer, examples):
    a = eval_loss(model, tokenizer, examples["validation"], batch_size=8)
    b = eval_loss(model, tokenizer, examples["validation"], batch_size=3)
    assert math.isfinite(a["eval_loss"]) and a["perplexity"] == pytest.approx(math.exp(a["eval_loss"]))
    assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)


def test_batched_generation_matches_one_at_a_time(model, tokenizer, examples):
    prompts = [ex["prompt"] for ex in examples["test"]][:4]
    batched = generate_replies(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    single = [generate_replies(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored after generation


def test_save_dir_atomic_keeps_the_old_folder_when_saving_fails(tmp_path):
    target = tmp_path / "adapter"
    save_dir_atomic(target, lambda p: (p.mkdir(), (p / "weights.bin").write_text("good")))

    def broken(p):
        p.mkdir()
        (p / "weights.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_dir_atomic(target, broken)
    assert (target / "weights.bin").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("LLAMA_3_2_3B", 3_212_749_824), ("LLAMA_3_1_8B", 8_030_261_248), ("LLAMA_2_7B", 6_738_415_616)],
)
def test_published_parameter_counts_on_the_meta_device(spec, expected):
    """The literal configs reproduce the parameter counts the model cards publish."""
    from helpers.memory import count_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_config(getattr(models, spec)))
    assert count_parameters(model)[1] == expected
