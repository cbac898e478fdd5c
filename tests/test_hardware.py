"""Tests for helpers/hardware.py: the precision rule, hardware detection, package versions."""

from __future__ import annotations

import re

import pytest
import torch

from helpers.hardware import Hardware, choose_precision, detect_hardware, package_versions


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


def test_package_versions():
    versions = package_versions()
    expected = {"python", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"}
    assert set(versions) == expected
    assert re.match(r"\d+\.\d+", versions["python"])
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert all(isinstance(v, str) and v for v in versions.values())
