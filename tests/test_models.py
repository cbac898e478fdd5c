"""Profiles, the tiny model and its tokenizer, loss masking, evaluation and atomic folder saves."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)

from helpers import models, shapes, stand_in
from helpers.artifacts import atomic_dir
from helpers.chat import CHAT_TEMPLATE_KWARGS, LLAMA_3_2_STYLE_TEMPLATE, load_tokenizer, stop_token_ids
from helpers.checks import check_special_tokens
from helpers.data import check_lengths, load_support, to_conversational
from helpers.evaluate import (
    copy_probe,
    eval_loss,
    generate_replies,
    longest_first,
    reply_scores,
    task_accuracy,
)
from helpers.masking import tokenize_with_mask
from helpers.models import choose_model, resolve_profile
from helpers.shapes import LLAMA_3_2_1B, llama_config
from helpers.stand_in import (
    LLAMA_3_2_SPECIAL_TOKENS,
    SHRUNK_BODY,
    TINY_MODEL_DIR,
    build_random_llama,
    llama_3_2_tokenizer,
)

# Llama 3.2 1B Instruct's special-token ids, as its tokenizer and configs publish them.
LLAMA_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|reserved_special_token_0|>": 128002,
    "<|reserved_special_token_1|>": 128003,
    "<|finetune_right_pad_id|>": 128004,
    "<|reserved_special_token_2|>": 128005,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|python_tag|>": 128010,
    "<|reserved_special_token_3|>": 128011,
    "<|reserved_special_token_247|>": 128255,
}


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


def test_helpers_read_no_course_variable_the_parameters_cell_does(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    monkeypatch.setenv("COURSE_MODEL_ID", "someone/elsewhere")
    assert resolve_profile("hub") == "hub"
    assert choose_model("hub").path == "meta-llama/Llama-3.2-1B-Instruct"
    helpers = Path(models.__file__).parent
    reads = [
        f"{path.name}:{n}"
        for path in sorted(helpers.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"environ[^\n]*COURSE_", line)
    ]
    assert not reads, (
        f"helpers read COURSE_* variables (read them in the notebooks' parameters cell): {reads}"
    )


def test_auto_profile_follows_hardware():
    assert resolve_profile("auto", cuda_available=True) == "hub"
    assert resolve_profile("llama-3.2-1b") == "hub", "the hub profile's earlier name still works"
    assert resolve_profile("auto", cuda_available=False) == "tiny"


def test_unknown_profile_lists_the_choices():
    with pytest.raises(ValueError, match=r"Unknown profile 'llama-7b'.*tiny.*PROFILE"):
        resolve_profile("llama-7b")


def test_real_profile_uses_hub_id_and_its_override():
    assert choose_model("hub").path == "meta-llama/Llama-3.2-1B-Instruct"
    assert (
        choose_model("hub", "HuggingFaceTB/SmolLM2-135M-Instruct").path
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


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
    assert a["per_example"] == pytest.approx(b["per_example"], rel=1e-4) and len(a["per_example"]) == len(
        examples["validation"]
    )
    one = eval_loss(model, tokenizer, examples["validation"].select([2]), batch_size=1)
    # each example's own loss, in dataset order
    assert a["per_example"][2] == pytest.approx(one["eval_loss"], rel=1e-4)


def test_text_loss_scores_each_text_on_its_own(model, tokenizer):
    from helpers.data import load_general_text
    from helpers.evaluate import text_loss

    texts, source = load_general_text("tiny")
    assert len(texts) == 200 and "never read" in source and len(load_general_text("tiny", 4)[0]) == 4
    together = text_loss(model, tokenizer, texts[:6], batch_size=4)
    alone = [text_loss(model, tokenizer, [t])["loss"] for t in texts[:6]]
    assert together["per_text"] == pytest.approx(alone, rel=1e-4)
    assert min(alone) <= together["loss"] <= max(alone)


def test_evaluation_batches_are_mostly_real_tokens(model, tokenizer):
    """At most 5% of the positions an evaluation batch computes are padding (longest-first batches)."""
    validation = to_conversational(
        load_support({"validation": 200})["validation"], chat_template_kwargs=CHAT_TEMPLATE_KWARGS
    )
    assert eval_loss(model, tokenizer, validation, batch_size=16)["padding_share"] <= 0.05
    assert longest_first([3, 9, 1, 9]) in ([1, 3, 0, 2], [3, 1, 0, 2])


def test_batched_generation_matches_one_at_a_time(model, tokenizer, examples):
    prompts = [ex["prompt"] for ex in examples["test"]][:4]
    batched = generate_replies(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    single = [generate_replies(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored after generation


def test_reply_scores_on_the_support_data_are_task_accuracy(model, tokenizer):
    test = to_conversational(load_support({"test": 4})["test"], chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    scores, replies = reply_scores(model, tokenizer, test, max_new_tokens=32)
    accuracy, same_replies = task_accuracy(model, tokenizer, test, max_new_tokens=32)
    assert scores == {"metric": "task accuracy", **accuracy} and replies == same_replies


def test_atomic_dir_keeps_the_old_folder_when_saving_fails(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as folder:
        folder.mkdir()
        (folder / "weights.bin").write_text("good")

    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as folder:
        folder.mkdir()
        (folder / "weights.bin").write_text("half")
        raise KeyboardInterrupt
    assert (target / "weights.bin").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with pytest.raises(RuntimeError, match="wrote nothing"), atomic_dir(target):
        pass  # a save that wrote nothing never replaces the folder
    assert (target / "weights.bin").read_text() == "good"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("LLAMA_3_2_3B", 3_212_749_824), ("LLAMA_3_1_8B", 8_030_261_248), ("LLAMA_2_7B", 6_738_415_616)],
)
def test_published_parameter_counts_on_the_meta_device(spec, expected):
    """The literal configs reproduce the parameter counts the model cards publish."""
    from helpers.memory import count_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_config(getattr(shapes, spec)))
    assert count_parameters(model)[1] == expected


# ---------------------------------------------------------------------------
# The llama-3.2-1b-random profile: Llama 3.2's vocabulary and special ids (built shrunk here, not 2.5 GB)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shrunk_profile(tmp_path_factory):
    """The random-1B profile's folder, built by the same code with a toy body (2 layers, hidden size 64)."""
    return build_random_llama(tmp_path_factory.mktemp("profile") / "llama-3.2-1b-random", **SHRUNK_BODY)


def test_random_profile_tokenizer_has_llama_3_2_size_and_ids(tokenizer):
    built = llama_3_2_tokenizer()
    assert len(built) == 128256 == LLAMA_3_2_1B["vocab_size"]
    assert {t: built.convert_tokens_to_ids(t) for t in LLAMA_IDS} == LLAMA_IDS
    assert [built.convert_tokens_to_ids(t) for t in LLAMA_3_2_SPECIAL_TOKENS] == list(range(128000, 128256))
    assert (built.bos_token, built.eos_token, built.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", None)
    assert built.chat_template == LLAMA_3_2_STYLE_TEMPLATE
    # text keeps the tiny tokenizer's BPE: its text ids move down past the 8 special tokens it puts first
    text = "Hi, order 48213 never arrived: the desk lamp."
    tiny_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert built(text, add_special_tokens=False)["input_ids"] == [i - 8 for i in tiny_ids]
    assert built(text)["input_ids"][0] == 128000
    assert built.decode(built(text, add_special_tokens=False)["input_ids"]) == text
    # deterministic: a second build is byte for byte the same
    assert built.backend_tokenizer.to_str() == llama_3_2_tokenizer().backend_tokenizer.to_str()


def test_random_profile_folder_matches_llama_3_2(shrunk_profile):
    config = json.loads((shrunk_profile / "config.json").read_text())
    generation = json.loads((shrunk_profile / "generation_config.json").read_text())
    saved = json.loads((shrunk_profile / "tokenizer_config.json").read_text())
    for cfg in (config, generation):
        ids = (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"])
        assert ids == (128000, [128001, 128008, 128009], 128004)
    assert config["vocab_size"] == 128256 and config["num_hidden_layers"] == 2
    assert "pad_token" not in saved and saved["eos_token"] == "<|eot_id|>"
    with safe_open(str(shrunk_profile / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert (
        json.loads((shrunk_profile / stand_in.BUILD_MARKER).read_text())["version"]
        == stand_in.RANDOM_1B_BUILD_VERSION
    )


class ForceToken(LogitsProcessor):
    """Make greedy decoding pick `token` once `after` new tokens exist (random weights never stop alone)."""

    def __init__(self, prompt_len: int, after: int, token: int):
        self.prompt_len, self.after, self.token = prompt_len, after, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len >= self.after:
            scores = torch.full_like(scores, -math.inf)
            scores[:, self.token] = 0.0
        return scores


def test_random_profile_runs_a_step_and_generates(shrunk_profile):
    tokenizer = load_tokenizer(str(shrunk_profile))
    model = AutoModelForCausalLM.from_pretrained(shrunk_profile, dtype=torch.float32)
    check_special_tokens(model, tokenizer)  # refused every notebook before the fix
    assert tokenizer.pad_token_id == 128004 and stop_token_ids(tokenizer) == [128009, 128008, 128001]

    examples = to_conversational(
        load_support({"train": 2})["train"], chat_template_kwargs=CHAT_TEMPLATE_KWARGS
    )
    ids, labels = tokenize_with_mask(tokenizer, examples[0])
    assert check_lengths(examples, tokenizer, 256)["max"] >= len(ids)
    assert ids[0] == 128000 and labels[-1] == 128009 and -100 in labels

    model.train()
    loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    loss.backward()
    # random weights: about uniform over the whole vocabulary
    assert abs(loss.item() - math.log(128256)) < 0.5
    assert model.model.embed_tokens.weight.grad[128009].abs().sum() > 0  # end of turn is trained on

    model.eval()
    prompt = labels.count(-100)
    inputs = torch.tensor([ids[:prompt]])
    for stop in stop_token_ids(tokenizer):
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([ForceToken(prompt, 2, stop)]),
        )
        assert out.shape[1] == prompt + 3 and out[0, -1].item() == stop  # stopped on it
    free = model.generate(inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(free[0, prompt:], skip_special_tokens=True).strip()
    assert generate_replies(model, tokenizer, [examples[0]["prompt"]], max_new_tokens=4) == [reply]


def test_tiny_tokenizer_with_the_1b_config_is_refused(tmp_path):
    """The old random-1B build (1B config, tiny tokenizer) fails the special-token guard; the new passes."""
    tiny = load_tokenizer(str(TINY_MODEL_DIR))
    with torch.device("meta"):
        old = LlamaForCausalLM(llama_config(LLAMA_3_2_1B, pad_token_id=tiny.pad_token_id))
    assert len(tiny) != old.config.vocab_size
    refused = r"does not stop on <\|eot_id\|> \(generation_config.eos_token_id=\[128001, 128008, 128009\]"
    with pytest.raises(ValueError, match=refused):
        check_special_tokens(old, tiny)

    llama_3_2_tokenizer().save_pretrained(tmp_path)
    new_tokenizer = load_tokenizer(str(tmp_path))
    with torch.device("meta"):
        new = LlamaForCausalLM(llama_config(LLAMA_3_2_1B, pad_token_id=new_tokenizer.pad_token_id))
    check_special_tokens(new, new_tokenizer)
    assert len(new_tokenizer) == new.config.vocab_size


def test_stale_random_profile_folder_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path)
    built = []

    def build_shrunk(path):
        built.append(path)
        return build_random_llama(path, **SHRUNK_BODY)

    monkeypatch.setattr(models, "build_random_llama_1b", build_shrunk)
    stale = tmp_path / "llama-3.2-1b-random"  # what the old build left: the 1B config with the tiny tokenizer
    load_tokenizer(str(TINY_MODEL_DIR)).save_pretrained(stale)
    llama_config(LLAMA_3_2_1B, pad_token_id=5).save_pretrained(stale)
    (stale / "model.safetensors").write_bytes(b"old weights")
    choice = choose_model("llama-3.2-1b-random")
    assert built == [stale] and choice.path == str(stale)
    assert len(AutoTokenizer.from_pretrained(choice.path)) == 128256
    # built with the shrunk body: not current at full size
    assert stand_in.is_current_build(stale, **SHRUNK_BODY) and not stand_in.is_current_build(stale)
    marker = stale / stand_in.BUILD_MARKER  # make the shrunk folder pass for a current full-size one
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "body": {}}))
    choose_model("llama-3.2-1b-random")
    assert built == [stale]  # a current folder is reused, not rebuilt


class _Copier(torch.nn.Module):
    """A fake causal LM that predicts, in the second half of a sequence, the token one copy-length back."""

    def __init__(self, vocab_size: int, length: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.length = vocab_size, length

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for t in range(self.length + 1, input_ids.shape[1] - 1):
            logits[torch.arange(len(input_ids)), t, input_ids[:, t + 1 - self.length]] = 30.0
        return type("Output", (), {"logits": logits})()


def test_copy_probe_tells_a_copier_from_the_tiny_model(tokenizer, model):
    digits = [str(d) for d in range(10)]
    copier = copy_probe(_Copier(len(tokenizer), 30), tokenizer, digits, length=30, n=4)
    # uniform: nothing to copy yet
    assert copier["first_copy"] == pytest.approx(math.log(len(tokenizer)), rel=1e-3)
    assert copier["ratio"] < 1e-6
    tiny = copy_probe(model, tokenizer, digits, length=30, n=4)
    assert all(math.isfinite(v) and v > 0 for v in tiny.values())


def test_the_shipped_base_copies_from_its_context(tokenizer, model):
    """On held-out random digit and word strings, the repeat costs at most a third of the first pass."""
    build = load_script("build_tiny_model")
    CORPUS, probe_pools = build.CORPUS, build.probe_pools
    paragraphs = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    pools = probe_pools(tokenizer, paragraphs)
    assert len(pools["words"]) > 100
    measured = {
        name: copy_probe(model, tokenizer, pool, length=30, n=32, seed=12345) for name, pool in pools.items()
    }
    for name, probe in measured.items():
        assert probe["ratio"] <= 1 / 3, f"{name}: {probe}"
    shipped = json.loads((TINY_MODEL_DIR / "build_info.json").read_text())["copy_probe"][-1]
    assert {name: shipped[name]["ratio"] for name in pools} == pytest.approx(
        {name: probe["ratio"] for name, probe in measured.items()}, abs=0.01
    )  # build_info.json tells the truth about these weights


def test_copy_probe_refuses_strings_of_several_tokens(tokenizer, model):
    with pytest.raises(ValueError, match="one token each"):
        copy_probe(model, tokenizer, ["12", "a sentence of several tokens"])
