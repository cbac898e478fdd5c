"""Tests for helpers/hardware.py: the precision rule, hardware detection, 4-bit layers on this device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import hardware as hardware_module
from helpers.hardware import (
    BF16,
    FP16_MIXED,
    FP32,
    Hardware,
    choose_precision,
    detect_hardware,
)
from helpers.preflight import describe_run


@pytest.mark.parametrize(
    ("capability", "name"),
    [
        ((7, 5), "T4"),
        ((6, 1), "GTX 1080 / P40"),
        ((7, 0), "V100"),
    ],
)
def test_pre_ampere_cuda_gets_fp16_mixed(capability, name):
    precision = choose_precision("cuda", capability)
    assert precision.name == "fp16 mixed", name
    assert precision.fp16 is True
    assert precision.bf16 is False
    assert precision.torch_dtype == torch.float16


@pytest.mark.parametrize(("capability", "name"), [((8, 0), "A100"), ((8, 6), "RTX 3090"), ((9, 0), "H100")])
def test_ampere_and_newer_cuda_gets_bf16(capability, name):
    precision = choose_precision("cuda", capability)
    assert precision.name == "bf16", name
    assert precision.bf16 is True
    assert precision.fp16 is False
    assert precision.torch_dtype == torch.bfloat16


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_cpu_and_mps_get_fp32(device_type):
    precision = choose_precision(device_type, None)
    assert precision.name == "fp32"
    assert precision.torch_dtype == torch.float32
    assert (precision.bf16, precision.fp16) == (False, False)


def test_precision_is_frozen():
    with pytest.raises(AttributeError):
        choose_precision("cpu", None).bf16 = True


def test_cuda_without_capability_and_unknown_device_are_refused():
    with pytest.raises(ValueError, match="get_device_capability"):
        choose_precision("cuda", None)
    with pytest.raises(ValueError, match="'cuda', 'mps' or 'cpu'"):
        choose_precision("tpu", None)


def test_detect_hardware_is_consistent():
    hardware = detect_hardware()
    assert hardware.device_type in ("cuda", "mps", "cpu")
    assert hardware.cpu_count >= 1
    assert hardware.total_memory_bytes > 2**28
    assert hardware.precision == choose_precision(hardware.device_type, hardware.capability)
    assert hardware.name
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert hardware.device_type == "cpu"
        assert hardware.capability is None


def test_describe_cpu_line():
    hardware = Hardware(
        device_type="cpu",
        name="AMD EPYC",
        capability=None,
        total_memory_bytes=int(23.5 * 2**30),
        cpu_count=2,
        precision=choose_precision("cpu", None),
    )
    assert hardware.describe() == "cpu (2 cores, 23.5 GiB RAM), fp32"


def test_describe_cuda_line_mentions_gpu_and_precision():
    hardware = Hardware(
        device_type="cuda",
        name="Tesla T4",
        capability=(7, 5),
        total_memory_bytes=15 * 2**30,
        cpu_count=4,
        precision=choose_precision("cuda", (7, 5)),
    )
    line = hardware.describe()
    assert "Tesla T4" in line and "7.5" in line and "15.0 GiB" in line and line.endswith("fp16 mixed")


def test_course_precision_overrides_the_rule_where_the_device_can_do_it(monkeypatch):
    assert choose_precision("cuda", (9, 0), "fp16") is FP16_MIXED  # the T4 regime on an H100
    assert choose_precision("cuda", (9, 0), "fp32") is FP32
    assert choose_precision("cuda", (7, 5), "auto") is FP16_MIXED
    assert choose_precision("cpu", None, "bf16") is BF16
    with pytest.raises(ValueError, match="float16 mixed precision needs a CUDA GPU"):
        choose_precision("cpu", None, "fp16")
    with pytest.raises(ValueError, match=r"compute capability 7\.5: it only emulates bfloat16"):
        choose_precision("cuda", (7, 5), "bf16")
    with pytest.raises(ValueError, match="'half' is not a precision: use auto, bf16, fp16 or fp32"):
        choose_precision("cuda", (9, 0), "half")
    # helpers read no COURSE_* variable: the parameters cell does
    monkeypatch.setenv("COURSE_PRECISION", "fp16")
    found = detect_hardware("bf16")
    if found.device_type == "cpu":
        assert found.precision is BF16 and found.precision_forced
        assert found.describe().endswith("bf16 (set by PRECISION)")


def test_gpu_memory_cap_sets_the_process_fraction(monkeypatch):
    fractions = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, device: fractions.append((f, device))
    )
    assert hardware_module._cap_gpu_memory(80 * 2**30, "15") == (15 * 2**30, 80 * 2**30)
    assert fractions == [(15 / 80, 0)]
    with pytest.raises(ValueError, match=r"at most this GPU's 80\.0 GiB"):
        hardware_module._cap_gpu_memory(80 * 2**30, 100)
    with pytest.raises(ValueError, match="is not a number of GiB"):
        hardware_module._cap_gpu_memory(80 * 2**30, "a T4")
    assert hardware_module._cap_gpu_memory(80 * 2**30, None) == (80 * 2**30, None)
    capped = Hardware("cuda", "NVIDIA H100", (9, 0), 15 * 2**30, 16, FP16_MIXED, True, 80 * 2**30)
    assert "capped at 15.0 of 80.0 GiB" in capped.describe()
    assert capped.describe().endswith("fp16 mixed (set by PRECISION)")


def test_check_bitsandbytes_round_trips_on_cpu():
    from helpers.hardware import check_bitsandbytes

    assert check_bitsandbytes("cpu") == "0.50.2"


def test_check_bitsandbytes_names_the_fix_when_it_cannot_run(monkeypatch):
    from bitsandbytes import functional

    from helpers.hardware import check_bitsandbytes

    def broken(*args, **kwargs):
        raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(functional, "quantize_4bit", broken)
    with pytest.raises(RuntimeError) as err:
        check_bitsandbytes("cpu")
    message = str(err.value)
    assert "cannot quantize to 4-bit on 'cpu' (NotImplementedError: no kernel for this device)" in message
    assert "pip install bitsandbytes==0.50.2" in message and "02_lora.ipynb" in message


def test_check_bitsandbytes_missing_package(monkeypatch):
    import builtins

    from helpers.hardware import check_bitsandbytes

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ImportError, match=r"QLoRA needs bitsandbytes.*pip install bitsandbytes==0\.50\.2"):
        check_bitsandbytes("cpu")


def _lora_grads(evaluate_first: bool, fix: bool) -> torch.Tensor:
    """4-bit tiny model (+ a no-grad evaluation if asked) + LoRA: all LoRA gradients of one backward pass."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from helpers.hardware import keep_4bit_layers_trainable
    from helpers.stand_in import TINY_MODEL_DIR

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(
        TINY_MODEL_DIR, quantization_config=config, dtype=torch.float32
    )
    if fix:
        keep_4bit_layers_trainable(model)
    ids = torch.randint(10, 4000, (2, 16), generator=torch.Generator().manual_seed(0))
    if evaluate_first:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    return torch.cat([p.grad.flatten() for p in peft_model.parameters() if p.requires_grad])


def test_4bit_layers_stay_trainable_after_an_evaluation():
    reference = _lora_grads(evaluate_first=False, fix=False)
    assert torch.allclose(_lora_grads(evaluate_first=True, fix=True), reference, atol=1e-6)


def test_the_upstream_repacking_bug_is_still_there_or_the_workaround_can_go():
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    reference = _lora_grads(evaluate_first=False, fix=False)
    broken = _lora_grads(evaluate_first=True, fix=False)
    assert not torch.allclose(broken, reference, atol=1e-3), (
        "bitsandbytes no longer breaks backprop after an evaluation: "
        "keep_4bit_layers_trainable may be removed"
    )


def test_describe_run_prints_the_banner_and_takes_plain_arguments(monkeypatch, tmp_path, capsys):
    # helpers read no COURSE_* variable: the parameters cell does
    monkeypatch.setenv("COURSE_PROFILE", "llama-3.2-1b")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "elsewhere"))
    run = describe_run(profile="tiny", model_id=None, results_dir=tmp_path / "results", output_dir=None)
    profile, choice, hardware = run.profile, run.choice, run.hardware
    assert profile == "tiny" and "tiny Llama" in choice.description
    assert run.results_dir == tmp_path / "results"
    # default: in the course folder
    assert run.output_dir == Path(__file__).resolve().parent.parent / "outputs"
    printed = capsys.readouterr().out
    for label in (
        "Profile   : tiny",
        "Model     :",
        f"Hardware  : {hardware.describe()}",
        "Precision :",
        "Versions  :",
    ):
        assert label in printed
    assert "NOTE: outputs below come from a stand-in model" in printed
