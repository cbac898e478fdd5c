"""Tests for helpers/memory.py: byte and parameter counts, the estimate, the MemoryTracker."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from torch import nn

from helpers import ROOT
from helpers.fit import fit_verdict, run_estimate
from helpers.memory import (
    QUANT_CONSTANTS_KEY,
    MemoryTracker,
    bytes_by_dtype,
    count_parameters,
    estimate_training_memory,
    estimate_weight_bytes,
    format_bytes,
    gradient_bytes,
    optimizer_state_bytes,
)

MB = 10**6


def small_model() -> nn.Sequential:
    """Four Linear layers: fp32, bf16, fp32, and a last one whose weight is tied to the first one's."""
    first = nn.Linear(8, 16)  # 128 + 16 = 144 params, fp32
    middle = nn.Linear(16, 16).to(torch.bfloat16)  # 256 + 16 = 272 params, bf16
    third = nn.Linear(16, 8)  # 128 + 8 = 136 params, fp32
    tied = nn.Linear(8, 16, bias=False)
    tied.weight = first.weight  # shared: must be counted once
    model = nn.Sequential(first, middle, third, tied)
    model.register_buffer("scale", torch.ones(10, dtype=torch.float16))  # 20 bytes
    return model


def test_bytes_by_dtype_counts_each_dtype_and_tied_weights_once():
    assert bytes_by_dtype(small_model()) == {
        "float32": (144 + 136) * 4,
        "bfloat16": 272 * 2,
        "float16": 10 * 2,
    }


def test_shared_storage_under_two_parameter_objects_is_counted_once():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = nn.Parameter(model[0].weight.data)  # a different Parameter, same memory
    assert bytes_by_dtype(model) == {"float32": 16 * 4}
    assert count_parameters(model) == (16, 16)


def test_count_parameters_and_gradient_bytes():
    model = small_model()
    assert count_parameters(model) == (552, 552)
    assert gradient_bytes(model) == 280 * 4 + 272 * 2

    for param in model[1].parameters():  # freeze the bf16 layer
        param.requires_grad_(False)
    assert count_parameters(model) == (280, 552)
    assert gradient_bytes(model) == 280 * 4


def test_optimizer_state_bytes_after_one_adamw_step():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))  # 144 + 68 = 212 params in 4 tensors
    optimizer = torch.optim.AdamW(model.parameters())
    assert optimizer_state_bytes(optimizer) == 0  # state is created lazily on the first step
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()

    # What torch keeps per parameter tensor: two float32 moments and a 0-d float32 'step' counter.
    for state in optimizer.state.values():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
    assert optimizer_state_bytes(optimizer) == 2 * 4 * 212 + 4 * 4


def test_linear4bit_quantized_on_cpu():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(128, 64, bias=True, quant_type="nf4", compress_statistics=True).to("cpu")
    assert layer.weight.dtype == torch.uint8  # 64 x 128 values packed two per byte

    counts = bytes_by_dtype(layer)
    assert counts["4-bit nf4"] == 64 * 128 // 2 == 4096
    assert counts["float32"] == 64 * 4  # the bias stays a normal tensor
    # Quantization constants of 8192 values in blocks of 64: 128 uint8 absmax (themselves quantized, since
    # compress_statistics=True), a 16-entry float32 code, a float32 offset, and the second level:
    # 1 float32 absmax and a 256-entry float32 code.
    assert counts[QUANT_CONSTANTS_KEY] == 128 + 16 * 4 + 4 + 4 + 256 * 4

    assert count_parameters(layer) == (64, 64 * 128 + 64)  # the 4-bit weight is frozen
    assert gradient_bytes(layer) == 64 * 4

    # On CPUs with AVX512-BF16, an inference forward pass repacks the weight; the sizes stay the same.
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 128))
    assert bytes_by_dtype(layer)["4-bit nf4"] == 4096
    assert count_parameters(layer) == (64, 64 * 128 + 64)


def test_linear4bit_fp4_without_nested_statistics():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(128, 64, bias=False, quant_type="fp4", compress_statistics=False).to("cpu")
    assert bytes_by_dtype(layer) == {"4-bit fp4": 4096, QUANT_CONSTANTS_KEY: 128 * 4 + 16 * 4}


ESTIMATE_ARGS = dict(
    total_params=1000,
    trainable_params=100,
    weight_bytes=4000,
    batch_size=2,
    seq_len=4,
    hidden_size=8,
    num_layers=3,
    intermediate_size=16,
    vocab_size=10,
    num_heads=2,
    activation_bytes=2,
)


def test_estimate_training_memory_arithmetic():
    per_layer = 2 * 4 * (10 * 8 + 4 * 16) * 2  # 2304: SDPA keeps no attention probabilities
    logits = 2 * 4 * 10 * (2 + 8)  # 800: every position scored (loss_tokens=None)
    estimate = estimate_training_memory(**ESTIMATE_ARGS)
    assert estimate == {
        "weights": 4000,
        "gradients": 100 * 4,
        "optimizer_states": 100 * 8,
        "activations": 3 * per_layer + logits,
        "total": 4000 + 400 + 800 + 3 * per_layer + logits,
    }

    checkpointed = estimate_training_memory(**ESTIMATE_ARGS, gradient_checkpointing=True)
    assert checkpointed["activations"] == 3 * (2 * 4 * 8 * 2) + 2 * per_layer + logits, (
        "one layer rebuilt + its grads"
    )
    eager = estimate_training_memory(**ESTIMATE_ARGS, attention="eager")
    assert eager["activations"] == 3 * (per_layer + 2 * 4 * 2 * 4 * 2) + logits, (
        "eager keeps heads x seq per token"
    )
    scored = estimate_training_memory(**ESTIMATE_ARGS, loss_tokens=3)
    assert scored["activations"] == 3 * per_layer + 3 * 10 * (2 + 8), (
        "on CUDA TRL scores only labelled positions"
    )
    float32_stream = estimate_training_memory(**ESTIMATE_ARGS, residual_bytes=4)
    assert float32_stream["activations"] == 3 * 2 * 4 * (10 * 8 * 4 + 4 * 16 * 2) + logits
    with pytest.raises(ValueError, match="Unknown attention 'flash'"):
        estimate_training_memory(**ESTIMATE_ARGS, attention="flash")

    assert estimate_training_memory(**ESTIMATE_ARGS, optimizer="paged_adamw_8bit")["optimizer_states"] == 200
    assert estimate_training_memory(**ESTIMATE_ARGS, optimizer="adamw_8bit")["optimizer_states"] == 200
    assert estimate_training_memory(**ESTIMATE_ARGS, optimizer="sgd")["optimizer_states"] == 0
    embedding = estimate_training_memory(**ESTIMATE_ARGS, optimizer="paged_adamw_8bit", embedding_params=10)
    assert embedding["optimizer_states"] == 200 + 10 * 6, "8-bit AdamW keeps embedding states in 32 bits"
    assert embedding["total_on_gpu"] == embedding["total"] - embedding["optimizer_states"], (
        "paged states can leave the GPU"
    )
    fits, why = fit_verdict(embedding, embedding["total_on_gpu"], where="a GPU", margin=0)
    assert fits and "plus 260 B of paged optimizer states that can move to CPU memory" in why
    assert "total_on_gpu" not in estimate_training_memory(**ESTIMATE_ARGS, optimizer="adamw_8bit")
    assert estimate_training_memory(**ESTIMATE_ARGS, embedding_params=10)["optimizer_states"] == 800
    bf16 = estimate_training_memory(**ESTIMATE_ARGS, grad_bytes_per_param=2)
    assert bf16["gradients"] == 200
    assert bf16["optimizer_states"] == 400, "PyTorch AdamW keeps its moments in the weights' dtype"
    assert estimate_training_memory(**ESTIMATE_ARGS, grad_bytes_per_param=2, optimizer="paged_adamw_32bit")[
        "optimizer_states"
    ] == 800


def test_estimate_weight_bytes_matches_bitsandbytes_on_the_tiny_model():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from helpers.stand_in import TINY_MODEL_DIR

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        TINY_MODEL_DIR, quantization_config=config, dtype=torch.float32
    )
    measured = bytes_by_dtype(quantized)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(quantized.config)
    estimate = estimate_weight_bytes(meta, dtype_bytes=4, quantize_linear=True)
    assert estimate["4-bit nf4 (linear layers)"] == measured["4-bit nf4"]
    assert estimate[QUANT_CONSTANTS_KEY] == measured[QUANT_CONSTANTS_KEY]
    buffers = sum(b.nbytes for b in quantized.buffers())  # rotary frequencies: not weights
    assert estimate["32-bit (embeddings, norms)"] == measured["float32"] - buffers
    full = estimate_weight_bytes(meta, dtype_bytes=4)
    assert full == {"32-bit (embeddings, norms, linear)": 4 * 4_000_000, "total": 4 * 4_000_000}


def test_fit_verdict_says_why():
    estimate = {
        "weights": 6 * 2**30,
        "optimizer_states": 8 * 2**30,
        "activations": 2**30,
        "total": 15 * 2**30,
    }
    fits, why = fit_verdict(estimate, 16 * 2**30, where="Tesla T4")
    assert not fits
    assert why.startswith("does not fit on Tesla T4: needs about 15.00 GiB")
    assert "optimizer_states 8.00 GiB, weights 6.00 GiB" in why and "14.40 GiB usable of 16.00 GiB" in why
    fits, why = fit_verdict(estimate, 80 * 2**30, where="H100", reserve_bytes=2**29)
    assert fits and why.startswith("fits on H100")


def test_estimate_training_memory_refuses_bad_input():
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        estimate_training_memory(**ESTIMATE_ARGS, optimizer="adam")
    with pytest.raises(ValueError, match="pass them by name"):
        estimate_training_memory(**{**ESTIMATE_ARGS, "total_params": 10})


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(5 * 2**20) == "5.00 MiB"
    assert format_bytes(int(1.5 * 2**30)) == "1.50 GiB"
    assert format_bytes(150 * 2**30) == "150.0 GiB"


def _tracker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("MemoryTracker")]


def test_memory_tracker_cpu_sees_a_200_mb_tensor_freed_inside_the_phase():
    tracker = MemoryTracker("cpu")
    with tracker.phase("allocate"):
        big = torch.ones(50_000_000)  # 200 MB, written so the pages are resident
        time.sleep(0.15)  # several 20 ms samples
        del big
    result = tracker.results["allocate"]
    assert result["measured"] == "process RSS (psutil)"
    assert result["peak_bytes"] - result["start_bytes"] > 190 * MB
    assert result["peak_bytes"] - result["end_bytes"] > 100 * MB  # freed before the phase ended
    assert not _tracker_threads()


def test_memory_tracker_callback_measures_from_train_begin_to_train_end():
    """What the notebooks pass to the trainer: tracker.callback("train") opens the phase and closes it."""
    tracker = MemoryTracker("cpu")
    callback = tracker.callback("train")
    callback.on_train_begin(None, None, None)
    big = torch.ones(50_000_000)
    time.sleep(0.15)
    callback.on_train_end(None, None, None)
    del big
    result = tracker.results["train"]
    assert result["peak_bytes"] - result["start_bytes"] > 190 * MB
    assert not _tracker_threads()


def test_memory_tracker_keeps_the_measurement_when_the_phase_raises():
    tracker = MemoryTracker("cpu")
    with pytest.raises(RuntimeError, match="out of patience"):
        with tracker.phase("crash"):
            big = torch.ones(50_000_000)
            time.sleep(0.1)
            raise RuntimeError("out of patience")
    del big
    result = tracker.results["crash"]
    assert result["peak_bytes"] - result["start_bytes"] > 190 * MB
    assert not _tracker_threads()


def test_memory_tracker_record_and_table():
    tracker = MemoryTracker("cpu")
    with tracker.phase("load"):
        pass
    tracker.record("load", weights={"float32": 2048}, gradients=1024)
    tracker.record("estimate", total=3 * 2**30)
    assert tracker.results["load"]["gradients"] == 1024
    table = tracker.table()
    assert "load" in table and "process RSS (psutil)" in table
    assert "weights: float32 2.00 KiB" in table
    assert "gradients: 1.00 KiB" in table
    assert "total: 3.00 GiB" in table
    with pytest.raises(ValueError, match="'cuda', 'mps' or 'cpu'"):
        MemoryTracker("gpu")


def test_count_parameters_counts_tied_weights_once_on_the_meta_device():
    from transformers import AutoModelForCausalLM

    from helpers.shapes import LLAMA_3_2_1B, llama_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama_config(LLAMA_3_2_1B))
    assert count_parameters(model) == (1_235_814_400, 1_235_814_400)


GPU_RESULTS = sorted((ROOT / "results" / "gpu").glob("*/*/*.json"))
NOTEBOOK_ROWS = [p for p in GPU_RESULTS if p.stem in ("full", "lora", "qlora")]


@pytest.mark.parametrize(
    "path", NOTEBOOK_ROWS, ids=[f"{p.parent.parent.name}-{p.parent.name}-{p.stem}" for p in NOTEBOOK_ROWS]
)
def test_the_estimator_is_within_10_percent_of_the_gpu_runs_train_peak(path):
    """In the notebooks' settings, in both regimes, estimate / measured train peak allocated is in 0.9-1.1."""
    result = json.loads(path.read_text(encoding="utf-8"))
    measured = result["peak_memory"]["train"]["peak_bytes"]
    estimate = run_estimate(result)
    ratio = estimate.get("total_on_gpu", estimate["total"]) / measured
    assert 0.9 <= ratio <= 1.1, f"estimate / measured = {ratio:.3f}"
    if "memory_plan" in result["config"]:  # the notebook's own estimate, as it printed it
        stored = result["peak_memory"]["train"]["estimate"]
        assert 0.9 <= stored.get("total_on_gpu", stored["total"]) / measured <= 1.1


def test_the_gpu_runs_cover_every_method_in_both_regimes():
    found = {(p.parent.name, p.stem) for p in NOTEBOOK_ROWS}
    assert {(regime, method) for regime in ("native", "t4") for method in ("full", "lora", "qlora")} <= found


def test_the_fit_estimate_follows_the_rank_and_layers_the_notebooks_trained():
    """Notebook 4's "will it fit?" reads r and the targets from notebooks 2 and 3, not a typed-in 16."""
    from helpers.fit import method_estimate, planned_estimate
    from helpers.shapes import LLAMA_3_2_1B

    shape = {"seq_len": 256, "batch_size": 4}
    base = method_estimate(LLAMA_3_2_1B, "lora", **shape, lora_r=16)
    assert (
        method_estimate(LLAMA_3_2_1B, "lora", **shape, lora_r=64)["optimizer_states"]
        == 4 * base["optimizer_states"]
    )
    q_v = method_estimate(LLAMA_3_2_1B, "lora", **shape, lora_r=16, target_modules=["q_proj", "v_proj"])
    assert q_v["optimizer_states"] < base["optimizer_states"] / 5
    _, planned, _ = planned_estimate(LLAMA_3_2_1B, "qlora", 80 * 2**30, where="H100", **shape, lora_r=64)
    assert planned["optimizer_states"] > method_estimate(LLAMA_3_2_1B, "qlora", **shape)["optimizer_states"]


def test_todays_recipe_estimates_an_old_qlora_run_as_notebook_3_trains_now():
    """Notebook 4 shows what today's QLoRA recipe would need in a run made with PEFT's float32 upcast."""
    path = next(p for p in NOTEBOOK_ROWS if p.stem == "qlora")
    old = json.loads(path.read_text(encoding="utf-8"))
    assert "embedding_dtype" not in old["config"]
    today = run_estimate(old, todays_recipe=True)
    recorded = run_estimate({**old, "config": {**old["config"], "embedding_dtype": "torch.bfloat16"}})
    assert today == recorded and today["weights"] < run_estimate(old)["weights"]
