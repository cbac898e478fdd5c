"""Checks that name the fix: precision, special tokens, LoRA targets, adapter-base match, tracker login."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from helpers.chat import end_of_turn, stop_token_ids

FINGERPRINT_FILE = "base_fingerprint.json"
_FINGERPRINT_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


# ---------------------------------------------------------------------------
# Before training: precision and tokens
# ---------------------------------------------------------------------------


def check_trainable_dtypes(model: torch.nn.Module, fp16: bool) -> int:
    """Refuse float16 trainable weights with fp16=True (and none at all); return the trainable count."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "No parameter requires grad, so training would change nothing. "
            "Fix: for full fine-tuning load the model without freezing it; "
            "for LoRA call get_peft_model(model, lora_config) before building the trainer."
        )
    half = [n for n, p in trainable if p.dtype == torch.float16]
    if fp16 and half:
        raise ValueError(
            f"{len(half)} trainable parameters are float16 (first: {half[0]}), and fp16=True: "
            "the Trainer would stop with 'Attempting to unscale FP16 gradients'. "
            "Fix: load the weights you train in float32 (from_pretrained(..., dtype=torch.float32)) "
            "and keep fp16=True for mixed precision, or use bf16 on an Ampere-or-newer GPU; "
            "do not call model.half() or model.to(torch.float16) after get_peft_model."
        )
    return sum(p.numel() for _, p in trainable)


def check_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Check pad differs from the stop tokens, and model and generation configs agree with the tokenizer."""
    stops = stop_token_ids(tokenizer)
    problems = []
    if tokenizer.pad_token_id is None:
        problems.append(
            "the tokenizer has no pad token (no token in its vocabulary can pad safely): "
            "add one, tokenizer.add_special_tokens({'pad_token': '<|pad|>'}), "
            "then model.resize_token_embeddings(len(tokenizer)) if len(tokenizer) "
            "is larger than the embedding (helpers.chat.add_pad_token does both)"
        )
    elif tokenizer.pad_token_id in stops:
        problems.append(
            f"the pad token {tokenizer.pad_token!r} is a stop token, so padding and the end of a reply are "
            "one token: transformers' DataCollatorForLanguageModeling sets every pad-id label to -100, "
            "so a model trained with it never learns to stop, and generate cannot infer an attention mask "
            "from the padding (something set pad = eos: reload with helpers.chat.load_tokenizer)"
        )
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    turn_end = end_of_turn(tokenizer)
    if tokenizer.convert_tokens_to_ids(turn_end) not in eos:
        problems.append(
            f"generation does not stop on {turn_end} (generation_config.eos_token_id={sorted(eos)}; fix: "
            "model.generation_config.eos_token_id = stop_token_ids(tokenizer))"
        )
    if model.config.pad_token_id not in (None, tokenizer.pad_token_id):
        problems.append(
            f"model.config.pad_token_id={model.config.pad_token_id} but the tokenizer pads with "
            f"{tokenizer.pad_token_id} (fix: model.config.pad_token_id = tokenizer.pad_token_id)"
        )
    if problems:
        raise ValueError("Special tokens are not set up for training: " + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------
# LoRA set-up and adapters
# ---------------------------------------------------------------------------


def _linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the nn.Linear layers LoRA can target (e.g. q_proj, ..., down_proj), without lm_head."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


def check_target_modules(model: torch.nn.Module, target_modules: str | list[str] | None) -> None:
    """Raise, listing the model's linear layers, if a LoRA target name matches no layer."""
    if target_modules is None or isinstance(target_modules, str):  # "all-linear" or a regex: peft checks it
        return
    available = _linear_module_names(model)
    module_names = [name for name, _ in model.named_modules()]
    unknown = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in module_names)]
    if unknown:
        raise ValueError(
            f"LoRA target_modules {unknown} match no layer of this model. Its linear layers are {available}. "
            "Fix: pick from those names, or use target_modules='all-linear' (names like 'query' or 'c_attn' "
            "come from BERT/GPT-2 tutorials)."
        )


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """Return the plain base of a PeftModel, so re-running a get_peft_model cell does not stack adapters."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        print("model already had LoRA layers (cell re-run?): removing them before adding new ones.")
        return model.unload()
    if hasattr(model, "peft_config"):
        raise ValueError(
            "This model already has LoRA layers injected (get_peft_model changes the model in place). "
            "Fix: load the base again with from_pretrained in the same cell that calls get_peft_model, "
            "or keep using the PeftModel that get_peft_model returned."
        )
    return model


def _base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _weight_sample(model: torch.nn.Module, n: int = 1024, rows: str = "first half") -> list[float]:
    """n evenly spaced values of the input embedding (never touched by LoRA), as floats.

    "first half": ordinary tokens only, since a pad token added for fine-tuning gets a new last row;
    "all": fingerprints saved before.
    """
    weight = _base_of(model).get_input_embeddings().weight.detach()
    weight = (weight[: max(1, len(weight) // 2)] if rows == "first half" else weight).flatten()
    step = max(1, weight.numel() // n)
    return weight[::step][:n].float().cpu().tolist()


def save_base_fingerprint(adapter_dir: str | Path, model: torch.nn.Module) -> Path:
    """Write base_fingerprint.json next to an adapter: the base's name, shape settings and a weight sample."""
    base = _base_of(model)
    fingerprint = {
        "name_or_path": base.name_or_path or None,
        "config": {k: getattr(base.config, k, None) for k in _FINGERPRINT_CONFIG_KEYS},
        "embedding_sample": _weight_sample(base),
        "sample_rows": "first half",
    }
    path = Path(adapter_dir) / FINGERPRINT_FILE
    path.write_text(json.dumps(fingerprint), encoding="utf-8")
    return path


def _short_name(name_or_path: str) -> str:
    """'/x/models/tiny-llama-support' -> 'tiny-llama-support'; 'models--org--name/snapshots/..' -> 'name'."""
    parts = Path(name_or_path).parts
    for part in parts:
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


def check_adapter_base(adapter_dir: str | Path, base_model: PreTrainedModel) -> None:
    """Refuse loading an adapter onto a base it was not trained on: another name, shapes or weights."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No adapter_config.json in {adapter_dir}: save the adapter there first.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base_name = base_model.name_or_path or None
    trained_on = config.get("base_model_name_or_path")
    where = trained_on or "see " + FINGERPRINT_FILE
    how = f"Fix: load the base the adapter was trained on ({where}) and retry."
    if trained_on and base_name and _short_name(trained_on) != _short_name(base_name):
        raise ValueError(
            f"The adapter in {adapter_dir} was trained on '{trained_on}', not '{base_name}'. {how}"
        )

    fingerprint_path = adapter_dir / FINGERPRINT_FILE
    if fingerprint_path.is_file():
        fingerprint = json.loads(fingerprint_path.read_text(encoding="utf-8"))
        differ = [
            f"{k} {v} (this base: {getattr(base_model.config, k, None)})"
            for k, v in fingerprint["config"].items()
            if v != getattr(base_model.config, k, None)
        ]
        if differ:
            raise ValueError(
                f"The adapter in {adapter_dir} was trained on a base with {', '.join(differ)}. {how}"
            )
        saved = torch.tensor(fingerprint["embedding_sample"])
        now = torch.tensor(_weight_sample(base_model, len(saved), fingerprint.get("sample_rows", "all")))
        if now.shape != saved.shape or (now - saved).abs().max() > 1e-2 * saved.abs().max():
            raise ValueError(
                f"The adapter in {adapter_dir} was trained on a base with the same shapes but different "
                "weights (e.g. base vs -Instruct, or random vs pretrained): "
                f"it would load silently and give poor output. {how}"
            )

    modules = dict(_base_of(base_model).named_modules())
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            if ".lora_A." not in key:
                continue
            module_name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            rank, in_features = f.get_slice(key).get_shape()
            module = modules.get(module_name)
            if module is None:
                raise ValueError(f"The adapter trains {module_name}, which this base does not have. {how}")
            if getattr(module, "in_features", in_features) != in_features:
                raise ValueError(
                    f"The adapter was trained for a base whose {module_name} takes {in_features} input "
                    f"features; this base's takes {module.in_features} (a different model size). {how}"
                )


# ---------------------------------------------------------------------------
# During training
# ---------------------------------------------------------------------------


def check_report_to(report_to: str) -> None:
    """Fail at once, with the fix, if the tracker is not installed or (wandb) not logged in; never prompt."""
    trackers = {"none": None, "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
    if report_to not in trackers:
        raise ValueError(f"REPORT_TO={report_to!r} is not one of {', '.join(map(repr, trackers))}.")
    package = trackers[report_to]
    if package and importlib.util.find_spec(package) is None:
        login = {"wandb": ", then `wandb login` (or set WANDB_API_KEY)", "trackio": ""}.get(package, "")
        raise ModuleNotFoundError(
            f"REPORT_TO={report_to!r} needs {package}: pip install {package}{login}, then re-run."
        )
    if report_to == "wandb" and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        logged_in = os.environ.get("WANDB_API_KEY") or (
            netrc.is_file() and "api.wandb.ai" in netrc.read_text()
        )
        if not logged_in:
            raise RuntimeError(
                "REPORT_TO='wandb' but this machine is not logged in to Weights & Biases, "
                "so training would stop at a login prompt. Fix: run `wandb login` in a terminal (or set "
                "WANDB_API_KEY; in Colab: Secrets), or set WANDB_MODE=offline to log locally, then re-run."
            )
