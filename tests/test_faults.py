"""Bad input and faults: each test injects one fault; the user gets a clear error or a clean recovery.

CPU only, no network (hub answers are simulated with monkeypatch), tiny models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import warnings
from datetime import datetime
from pathlib import Path

import api_checks
import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import hf_raise_for_status
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import chat_template_utils

from helpers import ROOT, callbacks, checks, preflight
from helpers.chat import CHAT_TEMPLATE, CHAT_TEMPLATE_KWARGS, load_tokenizer
from helpers.data import load_dataset_any
from helpers.fit import choose_plan
from helpers.memory import estimate_training_memory
from helpers.results import check_finite_metrics, write_json_atomic
from helpers.shapes import LLAMA_3_2_1B
from helpers.stand_in import TINY_MODEL_DIR

torch.set_num_threads(1)  # the machine is shared; these models are tiny anyway

REPO = "meta-llama/Llama-3.2-1B-Instruct"
SECRET = "hf_NotARealTokenButTreatItAsSecret123"
GiB = 2**30


# ---------------------------------------------------------------------------
# Fixtures and builders
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY_MODEL_DIR))


@pytest.fixture(scope="module")
def tiny_model():
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()


def small_llama(hidden: int = 32, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with tied embeddings, a few thousand parameters."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def hub_error(status: int, code: str | None = None, message: str | None = None) -> Exception:
    """The exception huggingface_hub itself raises for this HTTP answer to an auth check."""
    headers = {k: v for k, v in (("X-Error-Code", code), ("X-Error-Message", message)) if v}
    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}/auth-check")
    try:
        hf_raise_for_status(httpx2.Response(status, headers=headers, request=request))
    except Exception as err:  # noqa: BLE001 - we want whatever the library raises
        return err
    raise AssertionError("hf_raise_for_status did not raise")


def simulate_hub(
    monkeypatch, error: Exception | None, token: str | None = SECRET, whoami: dict | None = None
):
    """Make the hub answer `error` (or succeed) for auth_check, with `token` as the saved token."""

    def auth_check(repo_id, token=None):
        if error is not None:
            raise error

    def fake_whoami(token=None):
        if whoami is None:
            raise RuntimeError("whoami not simulated")
        return whoami

    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(huggingface_hub, "whoami", fake_whoami)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)


def access_message(monkeypatch, error, token=SECRET, whoami=None) -> str:
    simulate_hub(monkeypatch, error, token, whoami)
    with pytest.raises(preflight.ModelAccessError) as info:
        preflight.check_model_access(REPO)
    assert SECRET not in str(info.value)
    return str(info.value)


def token_dataset(n: int = 24, length: int = 16, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 128, (n, length), generator=generator)
    return [{"input_ids": r, "labels": r.clone()} for r in rows]


def make_trainer(output_dir: Path, callbacks=(), max_steps: int = 6, **overrides) -> Trainer:
    """A Trainer on small_llama with checkpoints every 2 steps; deterministic on CPU."""
    settings = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        logging_steps=1,
        logging_nan_inf_filter=False,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return Trainer(
        model=small_llama(),
        args=TrainingArguments(**settings),
        train_dataset=token_dataset(),
        callbacks=list(callbacks),
    )


class AtStep(TrainerCallback):
    """Run action(model) at the end of one step."""

    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.action(model)


class CountSteps(TrainerCallback):
    """Count the optimizer steps this run actually performs."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def losses(trainer: Trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights and losses of a 6-step run that nobody interrupts."""
    trainer = make_trainer(tmp_path_factory.mktemp("uninterrupted"))
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, losses(trainer)


# ---------------------------------------------------------------------------
# Gated or missing model (no network: the hub's answers are simulated)
# ---------------------------------------------------------------------------


def test_gated_model_without_token_says_accept_licence_and_log_in(monkeypatch):
    message = access_message(monkeypatch, hub_error(401, "GatedRepo"), token=None)
    assert "you are not logged in" in message
    assert f"open https://huggingface.co/{REPO}, sign in and accept the licence" in message
    assert "hf auth login" in message and "HF_TOKEN" in message and "Secrets" in message


def test_gated_model_licence_not_accepted(monkeypatch):
    error = hub_error(
        403, "GatedRepo", f"Access to model {REPO} is restricted and you are not in the authorized list."
    )
    message = access_message(monkeypatch, error)
    assert "your account has no access yet" in message
    assert "accept the licence and wait for approval" in message and "hf auth whoami" in message


def test_gated_model_access_request_pending(monkeypatch):
    error = hub_error(
        403, "GatedRepo", f"Your request to access model {REPO} is awaiting a review from the repo authors."
    )
    message = access_message(monkeypatch, error)
    assert "your access request is still pending review by the authors" in message
    assert "COURSE_PROFILE=tiny" in message


def test_gated_model_fine_grained_token_without_gated_permission(monkeypatch):
    whoami = {"auth": {"accessToken": {"role": "fineGrained", "fineGrained": {"canReadGatedRepos": False}}}}
    message = access_message(monkeypatch, hub_error(403, "GatedRepo", "Access restricted."), whoami=whoami)
    assert (
        "your token is fine-grained and lacks 'Read access to contents of all public gated repos" in message
    )


def test_gated_model_with_rejected_token(monkeypatch):
    message = access_message(monkeypatch, hub_error(401, "GatedRepo"))
    assert "the hub did not accept your token (expired, revoked or mistyped?)" in message
    assert "hf auth whoami" in message


def test_missing_model_says_check_the_spelling(monkeypatch):
    message = access_message(monkeypatch, hub_error(404, "RepoNotFound"))
    assert f"{REPO} was not found on the Hugging Face hub" in message and "check the spelling" in message


def test_no_network_names_offline_mode(monkeypatch):
    error = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    message = access_message(monkeypatch, error)
    assert "Could not reach https://huggingface.co" in message and "HF_HUB_OFFLINE=1" in message


def test_offline_mode_uses_the_cache_or_explains(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(preflight.ModelAccessError, match=r"not in the local cache and offline mode is on"):
        preflight.check_model_access(REPO)
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(tmp_path / "config.json")
    )
    assert preflight.check_model_access(REPO) == "cache"


def test_local_model_folder_needs_no_hub(monkeypatch):
    simulate_hub(monkeypatch, AssertionError("the hub must not be asked about a local folder"))
    assert preflight.check_model_access(str(TINY_MODEL_DIR)) == "local"
    simulate_hub(monkeypatch, None)
    assert preflight.check_model_access(REPO) == "hub"


@pytest.mark.parametrize(
    "status, code", [(401, "GatedRepo"), (403, "GatedRepo"), (404, "RepoNotFound"), (500, None)]
)
def test_token_is_never_printed_or_saved(monkeypatch, tmp_path, capsys, status, code):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    access_message(monkeypatch, hub_error(status, code))  # asserts the secret is not in the message
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert list(tmp_path.iterdir()) == []  # nothing written


# ---------------------------------------------------------------------------
# Library drift
# ---------------------------------------------------------------------------


def test_installed_versions_match_the_pins():
    installed = preflight.check_pinned_versions()
    assert installed["transformers"] == preflight.read_pins()["transformers"]
    assert "pytest" not in installed  # test tools are not runtime pins


def test_version_mismatch_names_package_pin_and_fix(monkeypatch, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "transformers==4.44.0\nnot-a-real-package-xyz==1.0\n# notebooks and tests\npytest==1\n"
    )
    with pytest.raises(RuntimeError) as info:
        preflight.check_pinned_versions(requirements)
    message = str(info.value)
    assert "transformers 5.24.0 (pinned 4.44.0)" in message
    assert "not-a-real-package-xyz is not installed (pinned 1.0)" in message
    assert "pip install -r requirements.txt, then restart the kernel" in message


def test_upgraded_but_not_restarted_kernel_is_detected(monkeypatch, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("peft==0.21.2\n")
    import peft

    monkeypatch.setattr(peft, "__version__", "0.13.0")  # what the running kernel imported before the upgrade
    with pytest.raises(
        RuntimeError, match=r"peft 0\.13\.0 is imported but 0\.21\.2 is installed: restart the kernel"
    ):
        preflight.check_pinned_versions(requirements)


def test_local_torch_build_counts_and_other_torch_only_warns(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    assert preflight.check_pinned_versions(requirements)  # 2.13.0+cpu satisfies 2.13.0
    requirements.write_text("torch==2.0.0\n")
    with pytest.warns(UserWarning, match=r"Not the tested version: torch .* \(pinned 2\.0\.0\)"):
        preflight.check_pinned_versions(requirements)


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*_*.ipynb")), ids=lambda p: p.name)
def test_notebook_keyword_arguments_exist_in_installed_libraries(path):
    code = notebook_code(path)
    # the calls this test exists for are there (notebook 4's sweep takes helpers/recipe.py's SFTConfig)
    assert ("SFTConfig(" in code or "sft_config(" in code) and "from_pretrained(" in code
    assert api_checks.unknown_call_keywords(code) == []


def test_old_tutorial_keywords_are_reported_with_their_new_names():
    code = (
        "args = SFTConfig(output_dir='x', max_seq_length=512, evaluation_strategy='steps')\n"
        "trainer = SFTTrainer(model=model, args=args, tokenizer=tok)\n"
        "model = AutoModelForCausalLM.from_pretrained('m', load_in_4bit=True, use_auth_token=True)\n"
        "bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_typ='nf4')\n"
        "lora = LoraConfig(r=8, target_module=['q_proj'])\n"
        "%pip install trl\n"
    )
    problems = api_checks.unknown_call_keywords(code)
    assert "line 1: SFTConfig(max_seq_length=...) is not accepted; use max_length (in SFTConfig)" in problems
    assert "line 1: SFTConfig(evaluation_strategy=...) is not accepted; use eval_strategy" in problems
    assert "line 2: SFTTrainer(tokenizer=...) is not accepted; use processing_class" in problems
    assert any("from_pretrained(load_in_4bit=...)" in p and "BitsAndBytesConfig" in p for p in problems)
    assert any("from_pretrained(use_auth_token=...)" in p and "use token" in p for p in problems)
    assert any("BitsAndBytesConfig(bnb_4bit_quant_typ=...)" in p for p in problems)
    assert any("LoraConfig(target_module=...)" in p for p in problems)
    assert len(problems) == 7


# ---------------------------------------------------------------------------
# Hardware: memory, disk, precision
# ---------------------------------------------------------------------------


def test_full_fine_tuning_of_1b_that_does_not_fit_is_refused_with_the_options():
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B)).parameters())
    shape = dict(
        seq_len=256, hidden_size=2048, num_layers=16, intermediate_size=8192, vocab_size=128256, num_heads=32
    )
    plans = {
        "plain": estimate_training_memory(
            total_params=params, trainable_params=params, weight_bytes=4 * params, batch_size=8, **shape
        ),
        "low memory": estimate_training_memory(
            total_params=params,
            trainable_params=params,
            weight_bytes=4 * params,
            optimizer="paged_adamw_8bit",
            batch_size=2,
            gradient_checkpointing=True,
            activation_bytes=2,
            **shape,
        ),
    }
    assert choose_plan(plans, 15 * GiB, where="a T4", reserve_bytes=GiB // 2) == "low memory"
    with pytest.raises(MemoryError) as info:
        choose_plan(plans, 8 * GiB, where="an 8 GB GPU", reserve_bytes=GiB // 2)
    message = str(info.value)
    assert message.startswith("No plan fits on an 8 GB GPU: plain does not fit on an 8 GB GPU: needs about")
    assert "low memory does not fit" in message
    assert (
        "train with LoRA (02_lora.ipynb) or QLoRA (4-bit base weights) instead of full fine-tuning" in message
    )
    lora = estimate_training_memory(  # bf16 weights, fp32 adapters, 16-bit activations
        total_params=params, trainable_params=11_272_192, weight_bytes=2 * params, batch_size=8,
        activation_bytes=2, **shape,
    )
    assert choose_plan({"lora": lora}, 15 * GiB, where="a T4", reserve_bytes=GiB // 2) == "lora"


def test_fp16_trainable_weights_are_refused_up_front():
    model = small_llama().half()
    with pytest.raises(ValueError) as info:
        checks.check_trainable_dtypes(model, fp16=True)
    message = str(info.value)
    assert (
        "trainable parameters are float16" in message and "'Attempting to unscale FP16 gradients'" in message
    )
    assert "dtype=torch.float32" in message
    # float32 weights + fp16 autocast: fine
    assert checks.check_trainable_dtypes(small_llama(), fp16=True) > 0
    # what the user would otherwise meet, later, from torch's gradient scaler:
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(weight.float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(torch.optim.SGD([weight], lr=0.1))


def test_nothing_trainable_is_refused():
    model = small_llama().requires_grad_(False)
    with pytest.raises(ValueError, match=r"No parameter requires grad.*get_peft_model"):
        checks.check_trainable_dtypes(model, fp16=False)


# ---------------------------------------------------------------------------
# Tokenizer and chat template
# ---------------------------------------------------------------------------


def test_pad_set_to_end_of_turn_after_loading_is_caught(tiny_model, tokenizer):
    checks.check_special_tokens(tiny_model, tokenizer)  # the course's set-up passes
    tok = load_tokenizer(str(TINY_MODEL_DIR))
    tok.pad_token = tok.eos_token  # what many tutorials (and some trainers) do
    with pytest.raises(
        ValueError, match=r"the pad token '<\|eot_id\|>' is a stop token.*never learns to stop"
    ):
        checks.check_special_tokens(tiny_model, tok)


def test_generation_config_without_end_of_turn_is_caught(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    # as a base model's generation config has it
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    with pytest.raises(
        ValueError, match=r"generation does not stop on <\|eot_id\|>.*stop_token_ids\(tokenizer\)"
    ):
        checks.check_special_tokens(model, tokenizer)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    model.config.pad_token_id = 0
    with pytest.raises(ValueError, match=r"model.config.pad_token_id=0 but the tokenizer pads with"):
        checks.check_special_tokens(model, tokenizer)


def test_double_bos_from_rendering_then_tokenizing_is_caught(tokenizer):
    messages = [{"role": "user", "content": "Where is order 12345?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    naive = tokenizer(text)["input_ids"]  # the template wrote a BOS, the tokenizer adds another
    with pytest.raises(ValueError, match=r"found it at positions \[0, 1\].*add_special_tokens=False"):
        api_checks.check_one_bos(naive, tokenizer)
    api_checks.check_one_bos(tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer)
    api_checks.check_one_bos(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"], tokenizer
    )


DATE_TEMPLATE = (
    "{%- if not date_string is defined %}"
    '{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}'
    '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}'
    + CHAT_TEMPLATE.replace(
        "{{- bos_token }}",
        "{{- bos_token }}"
        "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: ' + date_string + '<|eot_id|>' }}",
        1,
    )
)


def test_template_date_must_be_pinned(monkeypatch):
    tok = load_tokenizer(str(TINY_MODEL_DIR))
    tok.chat_template = DATE_TEMPLATE  # like Llama 3.2's own template
    messages = [{"role": "user", "content": "hi"}]

    def ids_on(day: int, **kwargs) -> list[int]:
        fake = type("FrozenClock", (), {"now": staticmethod(lambda: datetime(2025, 1, day))})
        monkeypatch.setattr(chat_template_utils, "datetime", fake)
        return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    assert ids_on(1) != ids_on(2)  # unpinned: the prompt changes every day
    assert ids_on(1, **CHAT_TEMPLATE_KWARGS) == ids_on(2, **CHAT_TEMPLATE_KWARGS)
    with pytest.raises(ValueError, match=r"writes today's date.*CHAT_TEMPLATE_KWARGS"):
        api_checks.check_template_pinned(tok, {})
    api_checks.check_template_pinned(tok, CHAT_TEMPLATE_KWARGS)
    tok.chat_template = None
    with pytest.raises(ValueError, match=r"no chat template \(base checkpoints ship none\).*-Instruct"):
        api_checks.check_template_pinned(tok, CHAT_TEMPLATE_KWARGS)


# ---------------------------------------------------------------------------
# Data (what tests/test_data.py does not already cover)
# ---------------------------------------------------------------------------


def test_utf8_file_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.jsonl"
    rows = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(10))
    path.write_bytes(rows.encode("utf-8-sig"))  # Windows tools often add a BOM
    splits = load_dataset_any(str(path))
    assert sum(len(s) for s in splits.values()) == 10
    assert "prompt" in splits["train"].column_names  # not '\ufeffprompt'


# ---------------------------------------------------------------------------
# PEFT
# ---------------------------------------------------------------------------


def test_unknown_lora_targets_list_the_available_layers():
    model = small_llama()
    with pytest.raises(ValueError) as info:
        checks.check_target_modules(model, ["query", "value", "q_proj"])
    message = str(info.value)
    assert "LoRA target_modules ['query', 'value'] match no layer" in message
    assert "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']" in message
    checks.check_target_modules(model, ["q_proj", "v_proj"])
    checks.check_target_modules(model, "all-linear")


def test_rerunning_the_lora_cell_does_not_stack_adapters(capsys):
    config = LoraConfig(r=4, target_modules="all-linear")
    model = get_peft_model(small_llama(), config)
    first = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # as when the cell runs a second time
    model = get_peft_model(checks.unwrap_peft(model), LoraConfig(r=4, target_modules="all-linear"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == first
    assert "removing them before adding new ones" in capsys.readouterr().out
    base = small_llama()
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))  # changes `base` in place
    with pytest.raises(ValueError, match=r"already has LoRA layers injected.*load the base again"):
        checks.unwrap_peft(base)


def save_adapter(folder: Path, base: LlamaForCausalLM) -> Path:
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(folder)
    checks.save_base_fingerprint(folder, model)
    return folder


def test_adapter_onto_a_base_of_other_shape_is_refused_clearly(tmp_path):
    adapter = save_adapter(tmp_path / "adapter", small_llama(hidden=32))
    with pytest.raises(ValueError) as info:
        checks.check_adapter_base(adapter, small_llama(hidden=64))
    assert (
        "trained on a base with hidden_size 32 (this base: 64), intermediate_size 64 (this base: 128)"
        in str(info.value)
    )
    # an adapter saved without a fingerprint: shapes still checked
    (adapter / checks.FINGERPRINT_FILE).unlink()
    with pytest.raises(
        ValueError, match=r"down_proj takes 64 input features; this base's takes 128 \(a different"
    ):
        checks.check_adapter_base(adapter, small_llama(hidden=64))


def test_adapter_onto_a_same_shape_but_different_base_is_refused(tmp_path):
    adapter = save_adapter(tmp_path / "adapter", small_llama(seed=0))
    other = small_llama(seed=1)  # same shapes: peft would load it silently
    PeftModel.from_pretrained(small_llama(seed=1), adapter)  # the library's behaviour: no error
    with pytest.raises(ValueError, match=r"same shapes but different weights.*load silently"):
        checks.check_adapter_base(adapter, other)
    checks.check_adapter_base(adapter, small_llama(seed=0))  # the right base passes


def test_adapter_onto_a_base_with_another_name_is_refused(tmp_path):
    small_llama(seed=0).save_pretrained(tmp_path / "Llama-3.2-1B")
    small_llama(seed=0).save_pretrained(tmp_path / "Llama-3.2-1B-Instruct")
    adapter = save_adapter(
        tmp_path / "adapter", LlamaForCausalLM.from_pretrained(tmp_path / "Llama-3.2-1B-Instruct")
    )
    wrong = LlamaForCausalLM.from_pretrained(tmp_path / "Llama-3.2-1B")
    with pytest.raises(ValueError, match=r"was trained on '.*Llama-3\.2-1B-Instruct', not '.*Llama-3\.2-1B'"):
        checks.check_adapter_base(adapter, wrong)


def test_tied_embeddings_survive_merge_save_and_reload(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            small_llama(),
            LoraConfig(
                r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"],
                ensure_weight_tying=True, init_lora_weights=False,
            ),
        )
        with torch.no_grad():  # stand-in for training: change the trained embedding copy
            model.get_input_embeddings().weight.add_(
                0.1 * torch.randn_like(model.get_input_embeddings().weight)
            )
        ids = torch.randint(0, 128, (2, 12))
        expected = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Training faults
# ---------------------------------------------------------------------------


def test_training_stops_at_the_first_non_finite_loss_naming_causes(tmp_path):
    def poison(model):
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")

    trainer = make_trainer(tmp_path, callbacks=[callbacks.StopOnNonFiniteLoss(), AtStep(3, poison)])
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("Training stopped at step 4: loss is nan (last finite loss")
    assert "at step 3)" in message
    assert "learning rate too high (0.001" in message and "bf16" in message and "check_lengths" in message
    assert f"Last good checkpoint: {tmp_path / 'checkpoint-2'}" in message
    assert not (tmp_path / "checkpoint-4").exists()  # step 4 was due a save: the nan weights were not saved


def test_nan_guard_refuses_the_default_log_filter_that_hides_nan(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[callbacks.StopOnNonFiniteLoss()], logging_nan_inf_filter=True)
    with pytest.raises(ValueError, match=r"logging_nan_inf_filter=True.*hiding a diverged run.*=False"):
        trainer.train()


def train_like_the_notebook(trainer):
    """The notebooks' training cell: Ctrl-C saves a checkpoint and stops (a callback); resume from it."""
    trainer.add_callback(callbacks.CheckpointOnInterrupt())
    return trainer.train(resume_from_checkpoint=callbacks.last_good_checkpoint(trainer.args.output_dir))


def test_last_good_checkpoint_handles_missing_empty_and_corrupt_folders(tmp_path, capsys):
    assert callbacks.last_good_checkpoint(tmp_path / "never-created") is None
    assert "does not exist): training starts from the beginning" in capsys.readouterr().out
    assert callbacks.last_good_checkpoint(tmp_path) is None
    assert "No complete checkpoint" in capsys.readouterr().out

    make_trainer(tmp_path, max_steps=6, save_total_limit=None).train()  # checkpoints 2, 4, 6
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()  # crash while saving step 6
    weights = tmp_path / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut-off file at step 4
    (tmp_path / "checkpoint-8").mkdir()  # an empty folder
    assert callbacks.last_good_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    out = capsys.readouterr().out
    assert "Skipping" in out and "checkpoint-8: missing trainer_state.json, optimizer.pt" in out
    assert "checkpoint-6: missing trainer_state.json" in out
    assert "checkpoint-4: model.safetensors is unreadable" in out


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, uninterrupted, capsys):
    weights, expected_losses = uninterrupted
    make_trainer(tmp_path).train()  # keeps checkpoint-4 and checkpoint-6
    shutil.rmtree(tmp_path / "checkpoint-6")  # as if the run had died after saving step 4
    counter = CountSteps()
    trainer = make_trainer(tmp_path, callbacks=[counter])
    train_like_the_notebook(trainer)
    assert f"Resuming from {tmp_path / 'checkpoint-4'}." in capsys.readouterr().out
    assert trainer.state.global_step == 6 and counter.steps == 2  # only steps 5 and 6 were run again
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=1e-5)
    assert losses(trainer)[5] == pytest.approx(expected_losses[5], rel=1e-5)


def test_only_a_bounded_number_of_checkpoints_is_kept(tmp_path):
    make_trainer(tmp_path, max_steps=6, save_steps=1, save_total_limit=2).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    with pytest.raises(ValueError, match=r"save_total_limit is None.*~15 GB.*save_total_limit=2"):
        callbacks.check_checkpoint_limit(make_trainer(tmp_path, save_total_limit=None).args)


def test_interrupt_saves_a_checkpoint_and_resuming_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    weights, _ = uninterrupted
    press_ctrl_c = AtStep(3, lambda m: os.kill(os.getpid(), signal.SIGINT))
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        train_like_the_notebook(make_trainer(tmp_path, callbacks=[press_ctrl_c]))
    assert "Training interrupted at step 3; checkpoint saved in" in str(info.value)
    assert "Re-run this cell (or the same command) to resume" in str(info.value)
    assert callbacks.checkpoint_problem(tmp_path / "checkpoint-3") is None
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    counter = CountSteps()
    trainer = make_trainer(tmp_path, callbacks=[counter])
    train_like_the_notebook(trainer)  # the re-run cell
    assert trainer.state.global_step == 6 and counter.steps == 3
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], atol=1e-6, rtol=1e-5)


def test_keyboard_interrupt_mid_step_points_to_the_last_good_checkpoint(tmp_path):
    def interrupt(model):  # Ctrl-C twice: the second press stops at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        KeyboardInterrupt,
        match=r"stopped mid-step\. Re-run this cell \(or the same command\) to resume from .*checkpoint-2",
    ):
        train_like_the_notebook(make_trainer(tmp_path, callbacks=[AtStep(3, interrupt)]))
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_an_interrupt_after_a_failed_run_interrupts_again(tmp_path):
    """A run that ended with an error never reached on_train_end: Ctrl-C must not be swallowed afterwards."""
    def fail(model):
        raise RuntimeError("a bad batch")

    with pytest.raises(RuntimeError, match="a bad batch"):
        train_like_the_notebook(make_trainer(tmp_path, callbacks=[AtStep(3, fail)]))
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


# ---------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------


def test_a_diverged_run_does_not_overwrite_good_results(tmp_path):
    path = write_json_atomic(tmp_path / "lora.json", {"eval_loss": 1.23})
    metrics = {"eval_loss": float("nan"), "perplexity": float("inf"), "accuracy_after": 0.0}
    with pytest.raises(
        ValueError, match=r"Not saving results: eval_loss=nan, perplexity=inf\. The run diverged"
    ):
        check_finite_metrics(**metrics)
        write_json_atomic(path, metrics)
    assert json.loads(path.read_text()) == {"eval_loss": 1.23}


def test_a_finished_run_is_not_resumed_but_started_again(tmp_path, capsys):
    make_trainer(tmp_path, max_steps=6).train()  # finished: its last checkpoint is step 6 of 6
    assert callbacks.last_good_checkpoint(tmp_path) is None
    assert (
        "finished (checkpoint-6 is its last step): training starts from the beginning"
        in capsys.readouterr().out
    )
    counter = CountSteps()
    train_like_the_notebook(make_trainer(tmp_path, callbacks=[counter]))
    assert counter.steps == 6, "re-running the notebook trains again instead of skipping to the end"


def test_save_results_refuses_a_diverged_run_and_keeps_the_old_file(tmp_path):
    from helpers.results import save_results

    path = write_json_atomic(tmp_path / "full.json", {"eval_loss": 0.5})
    with pytest.raises(ValueError, match=r"Not saving results: eval_loss=nan\. The run diverged"):
        save_results(path, method="full", eval_loss=float("nan"))
    assert json.loads(path.read_text()) == {"eval_loss": 0.5}


# ---------------------------------------------------------------------------
# Experiment tracking
# ---------------------------------------------------------------------------


def test_tensorboard_gets_the_training_loss_under_the_output_folder(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checks.check_report_to("tensorboard")
    trainer = make_trainer(tmp_path, max_steps=4, report_to="tensorboard", save_strategy="no")
    trainer.train()
    runs = sorted((tmp_path / "runs").iterdir())  # transformers writes to <output_dir>/runs/<date>_<host>
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    losses = [s.value for s in events.Scalars("train/loss")]
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses == pytest.approx(logged, rel=1e-5)


def test_trackers_that_cannot_run_fail_at_once_with_the_fix(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"REPORT_TO='tensorbord' is not one of"):
        checks.check_report_to("tensorbord")
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"needs wandb: pip install wandb, then `wandb login`"):
        checks.check_report_to("wandb")
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: object())  # installed, not logged in
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    with pytest.raises(
        RuntimeError, match=r"not logged in to Weights & Biases.*wandb login.*WANDB_MODE=offline"
    ):
        checks.check_report_to("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    checks.check_report_to("wandb")  # offline: logs locally, no login needed
    checks.check_report_to("none")
