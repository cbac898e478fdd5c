"""Notebooks 1-3's training recipe in one place for the scripts (tests/test_train_script.py compares them)."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedTokenizerBase
from trl import SFTConfig

from helpers.chat import add_pad_token
from helpers.hardware import Hardware, keep_4bit_layers_trainable

METHODS = ("full", "lora", "qlora")
# (tiny, real model): full below LoRA; tiny picked by make study, real the common 1e-5 / 2e-4
LEARNING_RATES = {
    "full": (1e-3, 1e-5),
    "lora": (3e-3, 2e-4),
    "qlora": (3e-3, 2e-4),
}


def lora_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> LoraConfig:
    """The notebooks' LoraConfig: rank 16, updates scaled by alpha / r = 2, no dropout, all linear layers."""
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,  # "all-linear": q, k, v, o, gate, up, down (not the output layer)
        task_type="CAUSAL_LM",
    )


def bnb_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The notebooks' 4-bit quantization: NF4, double quantization, matmuls in compute_dtype."""
    return BitsAndBytesConfig(
        load_in_4bit=True,  # the linear layers' weights in 4 bits
        bnb_4bit_quant_type="nf4",  # NormalFloat4
        bnb_4bit_use_double_quant=True,  # quantize the per-block scales too
        bnb_4bit_compute_dtype=compute_dtype,  # each matmul dequantizes to this
    )


def load_model(
    method: str, path: str, dtype: torch.dtype, device: str | int, seed: int,
    lora_dropout: float = 0.0, attention: str = "sdpa", upcast: bool = False, *,
    tokenizer: PreTrainedTokenizerBase,
) -> torch.nn.Module:
    """The base model for a method, with LoRA adapters for lora and qlora (4-bit NF4 base for qlora).

    tokenizer: the one load_tokenizer gave; where it has no safe pad, add_pad_token adds one, as notebooks 1-3
    do.

    qlora, as notebook 3: prepare_model_for_kbit_training casts the embedding and norms to float32; they stay
    frozen, so they go back to dtype, the compute dtype (upcast=True keeps PEFT's float32: the benchmark's
    naive rows).
    """
    torch.manual_seed(seed)
    if method == "full":  # float32 master weights
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    elif method == "lora":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=bnb_config(dtype), dtype=dtype,
            device_map={"": device},  # one copy per process
            attn_implementation=attention,
        )
    add_pad_token(model, tokenizer)
    if method == "full":
        return model
    if method == "qlora":
        keep_4bit_layers_trainable(model)  # CPU only: see notebook 3
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if not upcast:
            _frozen_to_compute_dtype(model, dtype)
    return get_peft_model(model, lora_config(lora_dropout=lora_dropout))


def _frozen_to_compute_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen float32 weights (prepare_model_for_kbit_training's embedding and norms) to dtype."""
    for param in model.parameters():
        if param.dtype == torch.float32 and not param.requires_grad:
            param.data = param.data.to(dtype)


def adapters_to_float32(model: torch.nn.Module) -> None:
    """Cast the trainable weights to float32, undoing SFTTrainer's bf16 cast of a 4-bit model's adapters."""
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def optimizer(method: str, device_type: str) -> str:
    """The scripts' optimizer: 8-bit paged AdamW for QLoRA on a GPU (as notebook 3), else fused AdamW."""
    return "paged_adamw_8bit" if method == "qlora" and device_type == "cuda" else "adamw_torch_fused"


def sft_config(
    method: str,
    profile: str,
    hardware: Hardware,
    *,
    output_dir: str,
    batch: int,
    max_length: int | None,
    seed: int,
    learning_rate: float | None = None,
    **overrides: Any,
) -> SFTConfig:
    """The notebooks' SFTConfig (learning_rate None: the method's rate for profile); overrides win."""
    settings = {
        "output_dir": output_dir,
        "num_train_epochs": 1,  # each training example seen once
        "per_device_train_batch_size": batch,
        "gradient_checkpointing": False,  # the notebooks' memory plan decides; TRL's default is on
        "train_sampling_strategy": "sequential",  # keep the order of batches_of_similar_length
        "learning_rate": learning_rate or LEARNING_RATES[method][profile != "tiny"],
        "optim": optimizer(method, hardware.device_type),
        "lr_scheduler_type": "cosine",  # decay to zero over the run
        "warmup_steps": 0.05,  # the first 5% of steps ramp the rate up
        "max_length": max_length,
        "completion_only_loss": True,  # loss on the answer only
        "bf16": hardware.precision.bf16,
        "fp16": hardware.precision.fp16,
        "use_cpu": hardware.device_type == "cpu",
        "logging_steps": 10,
        "save_steps": 100,  # a checkpoint every 100 steps ...
        "save_total_limit": 2,  # ... keeping the last two
        "seed": seed,
        "report_to": "none",
        "logging_nan_inf_filter": False,  # log a nan loss as nan: StopOnNonFiniteLoss stops the run at once
    }
    return SFTConfig(**{**settings, **overrides})
