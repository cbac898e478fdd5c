"""The notebooks' own cells, run on CPU in every precision regime: which dtypes the optimizer will step.

A T4 trains in fp16 mixed precision, Ampere and newer GPUs in bf16, the CPU in fp32. The Trainer builds its
optimizer from the parameters as they are after the trainer is built, so that is what these tests inspect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import ROOT
from helpers.hardware import BF16, FP16_MIXED, FP32, Precision
from helpers.masking import tokenize_with_mask
from helpers.memory import MemoryTracker
from helpers.stand_in import TINY_MODEL_DIR

REGIMES = {"bf16": BF16, "fp16": FP16_MIXED, "fp32": FP32}


def notebook_cells(name: str) -> list[str]:
    cells = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))["cells"]
    # not the recipe in one cell (section 16), which repeats the configs outside the lesson's flow
    return ["".join(c["source"]) for c in cells
            if c["cell_type"] == "code" and "recipe" not in c["metadata"].get("tags", [])]


def run_cells(name: str, needles: list[str], namespace: dict) -> dict:
    """Execute, in order, the notebook's code cells that contain each needle (one cell per needle)."""
    cells = notebook_cells(name)
    for needle in needles:
        [cell] = [c for c in cells if needle in c]
        exec(compile(cell, f"{name}: cell with {needle!r}", "exec"), namespace)
    return namespace


def notebook_namespace(tmp_path: Path, precision: Precision, memory_bytes: int = 64 * 2**30) -> dict:
    """The variables the notebooks' earlier cells define, for the tiny profile on this CPU."""
    hardware = SimpleNamespace(
        device_type="cpu", name="cpu", total_memory_bytes=memory_bytes, precision=precision
    )
    return {
        "precision": precision,
        "hardware": hardware,
        "profile": "tiny",
        "choice": SimpleNamespace(path=str(TINY_MODEL_DIR)),
        "SEED": 42,
        "MAX_LENGTH": 256,
        "TRAIN_EXAMPLES": 8,
        "EVAL_EXAMPLES": 4,
        "TEST_EXAMPLES": 2,
        "REPORT_TO": "none",
        "output_dir": tmp_path,
        "os": os,
        "DATA": "support",
        "COLUMN_MAP": None,
        "tokenize_with_mask": tokenize_with_mask,  # imported by a section 3 cell these tests skip
        "tracker": MemoryTracker("cpu"),  # made by a section 2 cell these tests skip
        "PLAN": None,  # notebook 1's parameters cell: the first memory plan that fits
    }


def stepped_dtypes(trainer) -> set[torch.dtype]:
    """The dtypes of the parameters in the optimizer the Trainer builds at train()."""
    optimizer = trainer.create_optimizer()
    return {p.dtype for group in optimizer.param_groups for p in group["params"]}


QLORA_CELLS = ["bnb_config = BitsAndBytesConfig(", "raw = load_dataset_any(", "rows = [tokenize_with_mask(",
               "model = prepare_model_for_kbit_training(", "lora_config = LoraConfig(", "memory_plans = {}",
               "trainer = SFTTrainer("]


def hidden_state_dtype(trainer) -> torch.dtype:
    """The dtype of hidden states out of the embedding in a forward pass as the Trainer runs it (autocast)."""
    model = trainer.model
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append(out.dtype)
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    try:
        with torch.no_grad(), trainer.autocast_smart_context_manager():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("regime", REGIMES)
def test_qlora_keeps_frozen_weights_in_the_compute_dtype_and_trains_float32_adapters(tmp_path, regime):
    """PEFT's float32 embedding and norms doubled QLoRA's activations on a GPU; bf16 adapters break fp16."""
    precision = REGIMES[regime]
    ns = run_cells("03_qlora.ipynb", QLORA_CELLS, notebook_namespace(tmp_path, precision))
    assert ns["training_args"].fp16 == (regime == "fp16") and ns["training_args"].bf16 == (regime == "bf16")
    trainer = ns["trainer"]
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, f"{name}: trainable in {param.dtype}"
        elif param.dtype != torch.uint8:  # uint8: the packed 4-bit weights
            assert param.dtype == precision.torch_dtype, (
                f"{name}: frozen in {param.dtype}, not {precision.torch_dtype}"
            )
    assert stepped_dtypes(trainer) == {torch.float32}
    assert hidden_state_dtype(trainer) == precision.torch_dtype


LORA_CELLS = [
    "model = AutoModelForCausalLM.from_pretrained(",
    "raw = load_dataset_any(",
    "rows = [tokenize_with_mask(",
    "lora_config = LoraConfig(",
    "memory_plans = {}",
    "trainer = SFTTrainer(",
]


@pytest.mark.parametrize("regime", REGIMES)
def test_lora_adapters_are_stepped_in_float32(tmp_path, regime):
    ns = run_cells("02_lora.ipynb", LORA_CELLS, notebook_namespace(tmp_path, REGIMES[regime]))
    assert stepped_dtypes(ns["trainer"]) == {torch.float32}
    frozen = {p.dtype for p in ns["trainer"].model.parameters() if not p.requires_grad}
    assert frozen == {REGIMES[regime].torch_dtype}
    assert hidden_state_dtype(ns["trainer"]) == REGIMES[regime].torch_dtype


# notebook 1's memory plan, in three cells: the plans, the arithmetic, the choice
PLAN_CELLS = ["plans = [", "def training_memory(", "plan_name = PLAN"]
FULL_CELLS = [
    "tracker = MemoryTracker(",
    "raw = load_dataset_any(",
    "rows = [tokenize_with_mask(",
    'trainable, total = count_parameters(model)\nprint(f"trainable:',
    *PLAN_CELLS,
    "trainer = SFTTrainer(",
]


@pytest.mark.parametrize("regime", REGIMES)
def test_full_fine_tuning_steps_float32_master_weights_when_memory_allows(tmp_path, regime):
    """Pure bf16 weights would round away AdamW steps below half a bf16 spacing (~6e-5 next to 0.02)."""
    ns = run_cells("01_full_finetuning.ipynb", FULL_CELLS, notebook_namespace(tmp_path, REGIMES[regime]))
    assert ns["plan"]["name"] == "plain" and ns["plan"]["weights"] == "float32"
    assert stepped_dtypes(ns["trainer"]) == {torch.float32}
    estimate = ns["plan_estimate"](ns["plan"])
    if regime == "fp32":
        assert "autocast_copies" not in estimate, "no autocast, no 16-bit copies"
    else:
        assert estimate["autocast_copies"] == 2 * ns["total"], (
            "autocast keeps a 16-bit copy of each float32 weight"
        )


@pytest.mark.parametrize("scored", [None, 40])
def test_notebook_1s_memory_arithmetic_is_the_helpers_estimate(tmp_path, scored):
    """Notebook 1 writes the arithmetic out, notebooks 2-4 call helpers.memory: they agree on every plan."""
    from helpers.memory import estimate_training_memory

    ns = run_cells("01_full_finetuning.ipynb", FULL_CELLS[:7], notebook_namespace(tmp_path, BF16))
    cfg, total = ns["cfg"], ns["total"]
    for plan in ns["plans"]:
        w = 4 if plan["weights"] == "float32" else 2
        helper = estimate_training_memory(
            total_params=total,
            trainable_params=total,
            weight_bytes=w * total,
            grad_bytes_per_param=w,
            optimizer=plan["optim"],
            batch_size=plan["micro_batch"],
            seq_len=100,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            intermediate_size=cfg.intermediate_size,
            vocab_size=cfg.vocab_size,
            num_heads=cfg.num_attention_heads,
            activation_bytes=2,
            residual_bytes=w,
            loss_tokens=scored,
            gradient_checkpointing=plan["checkpointing"],
            autocast_copy_params=total if w == 4 else 0,
            embedding_params=cfg.vocab_size * cfg.hidden_size,
        )
        assert ns["training_memory"](plan, cfg, total, 100, 2, scored) == helper, plan["name"]


def test_full_fine_tuning_falls_back_to_pure_bf16_only_when_nothing_else_fits(tmp_path):
    ns = notebook_namespace(tmp_path, BF16)
    run_cells("01_full_finetuning.ipynb", FULL_CELLS[:7], ns)  # plenty of memory: plain, float32
    estimates = {p["name"]: ns["plan_estimate"](p) for p in ns["plans"]}
    # paged states may leave the GPU
    need = {name: e.get("total_on_gpu", e["total"]) for name, e in estimates.items()}
    assert need["pure bf16"] < need["low memory"] < need["plain"]
    between = int((need["pure bf16"] + need["low memory"]) / 2 / 0.9)  # choose_plan keeps a 10% margin
    ns["hardware"].total_memory_bytes = between
    run_cells("01_full_finetuning.ipynb", PLAN_CELLS, ns)
    assert ns["plan"]["name"] == "pure bf16"
    assert {p.dtype for p in ns["model"].parameters()} == {torch.bfloat16}
    fp16 = notebook_namespace(tmp_path, FP16_MIXED, memory_bytes=between)
    run_cells("01_full_finetuning.ipynb", FULL_CELLS[:4], fp16)
    with pytest.raises(MemoryError):  # no pure-16-bit plan on a T4: float16 weights can't be trained
        run_cells("01_full_finetuning.ipynb", PLAN_CELLS, fp16)


@pytest.mark.parametrize(
    "name, cells",
    [
        (
            "01_full_finetuning.ipynb",
            [
                *FULL_CELLS,
                "train_output = trainer.train(",
                'model_dir = output_dir / "full-model"',
                "reloaded = AutoModelForCausalLM.from_pretrained(model_dir",
            ],
        ),
        (
            "02_lora.ipynb",
            [
                *LORA_CELLS,
                "train_output = trainer.train(",
                'adapter_dir = output_dir / "lora-adapter"',
                "reloaded = PeftModel.from_pretrained(fresh_base",
            ],
        ),
    ],
    ids=["full", "lora"],
)
def test_trained_and_reloaded_models_compute_alike_under_bf16(tmp_path, name, cells):
    """The Trainer wraps model.forward in autocast; the notebooks unwrap it, so the reload check is fair."""
    ns = run_cells(name, cells, notebook_namespace(tmp_path, BF16))
    assert "_original_forward" not in vars(ns["model"]), (
        "the Trainer's autocast wrapper is still on the trained model"
    )
    assert torch.equal(ns["logits_trained"], ns["logits_reloaded"])


@pytest.mark.parametrize(
    "name, cells", [("02_lora.ipynb", LORA_CELLS), ("03_qlora.ipynb", QLORA_CELLS)], ids=["lora", "qlora"]
)
def test_the_adapter_memory_plan_checkpoints_only_when_the_batch_would_not_fit(tmp_path, capsys, name, cells):
    """Gradient checkpointing on where the estimate says the batch won't fit, else off, said in the cell."""
    ns = notebook_namespace(tmp_path, BF16)
    ns["TRAIN_EXAMPLES"] = 4  # fewer than a batch: the largest batch, and the estimate, hold 4 examples
    run_cells(name, cells, ns)
    assert ns["batch"] == 4 and ns["memory_plans"]["no checkpointing"] == ns["estimate_for_model"](
        ns["model"],
        optimizer="adamw_torch",
        batch_size=4,
        seq_len=ns["longest"],
        compute_bytes=2,
        loss_tokens=None,
    )
    assert ns["memory_plan"] == "no checkpointing" and ns["training_args"].gradient_checkpointing is False
    assert "gradient checkpointing off" in capsys.readouterr().out
    need = {plan: estimate["total"] for plan, estimate in ns["memory_plans"].items()}
    assert need["gradient checkpointing"] < need["no checkpointing"]
    ns["hardware"].total_memory_bytes = int(
        (need["gradient checkpointing"] + need["no checkpointing"]) / 2 / 0.9
    )
    run_cells(name, ["memory_plans = {}", "trainer = SFTTrainer("], ns)
    assert (
        ns["memory_plan"] == "gradient checkpointing" and ns["training_args"].gradient_checkpointing is True
    )
    assert "does not fit" in capsys.readouterr().out and ns["trainer"].args.gradient_checkpointing
    ns["hardware"].total_memory_bytes = need["gradient checkpointing"] // 2
    with pytest.raises(MemoryError, match="No plan fits"):
        run_cells(name, ["memory_plans = {}"], ns)


def test_notebook_1_estimates_the_largest_micro_batch_the_data_gives(tmp_path):
    """A training set below a plan's micro-batch makes a smaller batch: the estimate must not count 8."""
    ns = notebook_namespace(tmp_path, BF16)
    ns["TRAIN_EXAMPLES"] = 4
    run_cells("01_full_finetuning.ipynb", FULL_CELLS[:7], ns)
    plain = ns["plans"][0]
    assert plain["micro_batch"] == 8
    assert ns["plan_estimate"](plain) == ns["training_memory"](
        {**plain, "micro_batch": 4}, ns["cfg"], ns["total"], ns["longest"], 2, None
    )
