"""Measure a model's weight footprint in 16-bit and in 4-bit NF4 on this machine, next to the estimate.

Usage (from the repository root, inside .venv):
    python scripts/measure_footprint.py [--profile llama-3.2-1b-random]
The llama-3.2-1b-random profile builds Llama 3.2 1B's architecture with random bf16 weights (2.5 GB, cached
in ~/.cache/llama-finetuning-course) on first use, so real-size memory can be measured without a download.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from helpers.hardware import check_bitsandbytes, detect_hardware
from helpers.memory import MemoryTracker, bytes_by_dtype, estimate_weight_bytes, format_bytes
from helpers.models import choose_model

VARIANTS = ("bf16", "nf4")


def measure(profile: str, variant: str) -> None:
    """Load the model one way, in this fresh process, and print estimate, tensor bytes and resident memory."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    hardware = detect_hardware()
    choice = choose_model(profile, cache_dir=os.environ.get("COURSE_CACHE_DIR"))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(choice.path))
    if variant == "bf16":
        kwargs, estimate = {}, estimate_weight_bytes(meta, dtype_bytes=2)
    else:
        check_bitsandbytes(hardware.device_type)
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs, estimate = (
            {"quantization_config": nf4},
            estimate_weight_bytes(meta, dtype_bytes=2, quantize_linear=True),
        )
    tracker = MemoryTracker(hardware.device_type)
    with tracker.phase(variant):
        model = AutoModelForCausalLM.from_pretrained(
            choice.path, dtype=torch.bfloat16, device_map=hardware.device_type, **kwargs
        )
        for tensor in model.state_dict().values():  # safetensors maps files lazily: touch every page
            tensor.view(-1)[:: max(1, tensor.numel() // 4096)].sum()
    measured = bytes_by_dtype(model)
    phase = tracker.results[variant]
    print(f"{variant}:")
    print(f"  estimate        {format_bytes(estimate['total']):>10}  "
          + ", ".join(f"{k} {format_bytes(v)}" for k, v in estimate.items() if k != "total"))
    print(f"  tensors         {format_bytes(sum(measured.values())):>10}  "
          + ", ".join(f"{k} {format_bytes(v)}" for k, v in measured.items()))
    print(f"  memory held     {format_bytes(phase['end_bytes'] - phase['start_bytes']):>10}  "
          f"(peak while loading {format_bytes(phase['peak_bytes'] - phase['start_bytes'])}, "
          f"{phase['measured']})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", default="llama-3.2-1b-random", help="a course profile (default: %(default)s)"
    )
    parser.add_argument(
        "--variant", choices=VARIANTS, help="measure only this one (each runs in its own process)"
    )
    args = parser.parse_args()
    if args.variant:
        measure(args.profile, args.variant)
        return
    choice = choose_model(args.profile, cache_dir=os.environ.get("COURSE_CACHE_DIR"))  # built on first use
    print(f"{choice.description}\non {detect_hardware().describe()}\n", flush=True)
    for variant in VARIANTS:
        subprocess.run(
            [sys.executable, __file__, "--profile", args.profile, "--variant", variant], check=True
        )


if __name__ == "__main__":
    main()
