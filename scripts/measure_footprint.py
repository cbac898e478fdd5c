"""Measure a model's weight footprint in 16-bit and in 4-bit NF4 on this machine, next to the estimate.

Usage (from the repository root, inside .venv):
    python scripts/measure_footprint.py [--profile llama-3.2-1b-random]
The llama-3.2-1b-random profile builds Llama 3.2 1B's architecture with random bf16 weights (2.5 GB, cached
in ~/.cache/llama-finetuning-course) on first use, so real-size memory can be measured without a download.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.hardware import check_bitsandbytes, detect_hardware  # noqa: E402
from helpers.memory import MemoryTracker, bytes_by_dtype, estimate_weight_bytes, format_bytes  # noqa: E402
from helpers.models import choose_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="llama-3.2-1b-random", help="a course profile (default: %(default)s)")
    args = parser.parse_args()
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

    hardware = detect_hardware()
    check_bitsandbytes(hardware.device_type)
    choice = choose_model(args.profile)
    print(f"{choice.description}\non {hardware.describe()}\n")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(choice.path))
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    variants = {
        "bf16": ({}, estimate_weight_bytes(meta, dtype_bytes=2)),
        "nf4 + double quant": ({"quantization_config": nf4}, estimate_weight_bytes(meta, dtype_bytes=2, quantize_linear=True)),
    }
    tracker = MemoryTracker(hardware.device_type)
    for name, (kwargs, estimate) in variants.items():
        gc.collect()
        with tracker.phase(name):
            model = AutoModelForCausalLM.from_pretrained(
                choice.path, dtype=torch.bfloat16, device_map={"": hardware.device_type}, **kwargs
            )
        measured = bytes_by_dtype(model)
        phase = tracker.results[name]
        print(f"{name}:")
        print(f"  estimate        {format_bytes(estimate['total']):>10}  "
              + ", ".join(f"{k} {format_bytes(v)}" for k, v in estimate.items() if k != "total"))
        print(f"  tensors         {format_bytes(sum(measured.values())):>10}  "
              + ", ".join(f"{k} {format_bytes(v)}" for k, v in measured.items()))
        print(f"  memory held     {format_bytes(phase['end_bytes'] - phase['start_bytes']):>10}  "
              f"(peak while loading {format_bytes(phase['peak_bytes'] - phase['start_bytes'])}, {phase['measured']})")
        del model


if __name__ == "__main__":
    main()
