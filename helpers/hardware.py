"""Which device we run on, which number format it trains in, and whether 4-bit layers work on it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch


@dataclass(frozen=True)
class Precision:
    """The number format for training and inference on one device.

    name: "bf16", "fp16 mixed" or "fp32".
    torch_dtype: the dtype to load weights in for inference, and the compute dtype of 4-bit layers.
        With "fp16 mixed" the weights you *train* stay float32 (load them in float32) and the Trainer
        runs the forward and backward passes in float16 (fp16=True): pure float16 weights would lose
        the small updates and the Trainer's gradient scaler refuses float16 trainable weights.
    bf16, fp16: the values to pass to TrainingArguments / SFTConfig.
    logits_rtol: how far, relative to the largest logit, two computations of the same logits may differ
        in this format (e.g. a merged model against the model with its adapter).
    """

    name: str
    torch_dtype: torch.dtype
    bf16: bool
    fp16: bool
    logits_rtol: float


BF16 = Precision(name="bf16", torch_dtype=torch.bfloat16, bf16=True, fp16=False, logits_rtol=5e-2)
FP16_MIXED = Precision(name="fp16 mixed", torch_dtype=torch.float16, bf16=False, fp16=True, logits_rtol=1e-2)
FP32 = Precision(name="fp32", torch_dtype=torch.float32, bf16=False, fp16=False, logits_rtol=1e-5)


def choose_precision(
    device_type: str, capability: tuple[int, int] | None, requested: str = "auto"
) -> Precision:
    """Pick bf16 on Ampere-or-newer CUDA GPUs, fp16 mixed precision on older ones, fp32 elsewhere.

    requested ("auto", "bf16", "fp16" or "fp32") overrides the rule where the device can do it.
    """
    if requested != "auto":
        return _requested_precision(device_type, capability, requested)
    if device_type == "cuda":
        if capability is None:
            raise ValueError(
                "choose_precision('cuda', None): a CUDA device needs its compute capability, "
                "e.g. choose_precision('cuda', torch.cuda.get_device_capability())."
            )
        # Native bfloat16 arrived with compute capability 8.0 (Ampere: A100, RTX 30xx).
        # torch.cuda.is_bf16_supported() also says True on a T4 (7.5) because it can emulate
        # bfloat16, but emulated bfloat16 is slow, so we decide from the capability alone.
        if tuple(capability) >= (8, 0):
            return BF16
        return FP16_MIXED
    if device_type in ("mps", "cpu"):
        # Apple GPUs and CPUs: float32 is the safe, well-supported choice.
        return FP32
    raise ValueError(f"Unknown device_type {device_type!r}: use 'cuda', 'mps' or 'cpu'.")


def _requested_precision(device_type: str, capability: tuple[int, int] | None, requested: str) -> Precision:
    """The precision asked for by name, or a ValueError saying why this device can't train in it."""
    by_name = {"bf16": BF16, "fp16": FP16_MIXED, "fp32": FP32}
    if requested not in by_name:
        raise ValueError(
            f"PRECISION={requested!r} is not a precision: use auto, bf16, fp16 or fp32."
        )
    if requested == "fp16" and device_type != "cuda":
        raise ValueError(
            "PRECISION=fp16: float16 mixed precision needs a CUDA GPU (its gradient scaler runs there); "
            f"on {device_type} use fp32 (or PRECISION = 'auto')."
        )
    if (
        requested == "bf16"
        and device_type == "cuda"
        and capability is not None
        and tuple(capability) < (8, 0)
    ):
        raise ValueError(
            f"PRECISION=bf16 on a GPU of compute capability {capability[0]}.{capability[1]}: it only "
            "emulates bfloat16 (slowly). Use fp16 (or unset the variable: the course picks fp16 there)."
        )
    return by_name[requested]


@dataclass
class Hardware:
    """What detect_hardware() found."""

    device_type: str  # "cuda", "mps" or "cpu"
    name: str  # GPU name, or the CPU model
    capability: tuple[int, int] | None  # CUDA compute capability, None elsewhere
    total_memory_bytes: int  # GPU memory on CUDA, system RAM on mps and cpu
    cpu_count: int
    precision: Precision
    precision_forced: bool = False  # True when the precision was asked for, not chosen by the rule
    memory_capped_from: int | None = None  # the GPU's real memory when a GPU-memory cap applied

    def describe(self) -> str:
        """One line for the top of a notebook, e.g. 'cpu (2 cores, 23.5 GiB RAM), fp32'."""
        gib = self.total_memory_bytes / 2**30
        forced = " (set by PRECISION)" if self.precision_forced else ""
        if self.device_type == "cuda":
            major, minor = self.capability or (0, 0)
            memory = f"{gib:.1f} GiB GPU memory"
            if self.memory_capped_from:
                memory = f"capped at {gib:.1f} of {self.memory_capped_from / 2**30:.1f} GiB"
            return (
                f"cuda {self.name} (compute {major}.{minor}, {memory}, "
                f"{self.cpu_count} CPU cores), {self.precision.name}{forced}"
            )
        if self.device_type == "mps":
            return (
                f"mps (Apple GPU, {self.cpu_count} cores, {gib:.1f} GiB unified memory), "
                f"{self.precision.name}{forced}"
            )
        return f"cpu ({self.cpu_count} cores, {gib:.1f} GiB RAM), {self.precision.name}{forced}"


def detect_hardware(precision: str | None = "auto", gpu_memory_gib: float | str | None = None) -> Hardware:
    """Look at the machine: a CUDA GPU if there is one, else an Apple GPU (mps), else the CPU.

    precision ("bf16", "fp16" or "fp32") overrides the precision rule; gpu_memory_gib caps what this
    process may allocate on the GPU (torch.cuda.set_per_process_memory_fraction), so a big GPU can show
    what fits a small one.
    """
    requested = (precision or "auto").strip().lower() or "auto"
    cpu_count = _usable_cpu_count()
    if torch.cuda.is_available():
        capability = tuple(torch.cuda.get_device_capability(0))
        total, capped_from = _cap_gpu_memory(torch.cuda.get_device_properties(0).total_memory, gpu_memory_gib)
        return Hardware(
            device_type="cuda",
            name=torch.cuda.get_device_name(0),
            capability=capability,
            total_memory_bytes=total,
            cpu_count=cpu_count,
            precision=choose_precision("cuda", capability, requested),
            precision_forced=requested != "auto",
            memory_capped_from=capped_from,
        )
    device_type = "mps" if torch.backends.mps.is_available() else "cpu"
    return Hardware(
        device_type=device_type,
        name="Apple GPU (mps)" if device_type == "mps" else _cpu_name(),
        capability=None,
        total_memory_bytes=psutil.virtual_memory().total,
        cpu_count=cpu_count,
        precision=choose_precision(device_type, None, requested),
        precision_forced=requested != "auto",
    )


def _cap_gpu_memory(total_bytes: int, value: float | str | None) -> tuple[int, int | None]:
    """Apply a GPU-memory cap in GiB if given: (usable bytes, the real total or None when not capped)."""
    if value in (None, ""):
        return total_bytes, None
    try:
        cap = int(float(value) * 2**30)
    except ValueError:
        raise ValueError(f"GPU_MEMORY_GIB={value!r} is not a number of GiB (e.g. 15 for a T4).") from None
    if not 0 < cap <= total_bytes:
        raise ValueError(
            f"GPU_MEMORY_GIB={value}: choose a size above 0 and at most this GPU's "
            f"{total_bytes / 2**30:.1f} GiB."
        )
    torch.cuda.set_per_process_memory_fraction(cap / total_bytes, 0)
    return cap, total_bytes


def _usable_cpu_count() -> int:
    """CPU cores this process may use (respects taskset/container limits where the OS reports them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux) or platform.processor(), else 'CPU'."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def check_bitsandbytes(device_type: str) -> str:
    """Check bitsandbytes can round-trip a 4-bit NF4 tensor on this device; return its version or raise."""
    fallback = "Or use the LoRA notebook (02_lora.ipynb), which needs no bitsandbytes."
    try:
        import bitsandbytes
        from bitsandbytes import functional
    except ImportError as err:
        raise ImportError(
            f"QLoRA needs bitsandbytes, which could not be imported ({err}). Install the course's pin: "
            "pip install bitsandbytes==0.50.2, then restart the kernel. " + fallback
        ) from err
    try:
        probe = torch.linspace(-1, 1, 128, device=device_type).reshape(2, 64)
        packed, state = functional.quantize_4bit(probe, quant_type="nf4")
        functional.dequantize_4bit(packed, state, quant_type="nf4")
    except Exception as err:
        raise RuntimeError(
            f"bitsandbytes {bitsandbytes.__version__} cannot quantize to 4-bit on '{device_type}' "
            f"({type(err).__name__}: {err}). "
            "4-bit works on CUDA GPUs (e.g. Colab's free T4) and, since bitsandbytes 0.49, on CPU: "
            "pip install bitsandbytes==0.50.2 and restart the kernel, "
            "or run on CPU with COURSE_PROFILE=tiny. " + fallback
        ) from err
    return bitsandbytes.__version__


def keep_4bit_layers_trainable(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights, which breaks backprop; return layers changed.

    bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks a Linear4bit's weight into an inference-only layout at
    its first forward pass without gradients (e.g. an evaluation before training). Afterwards its matmul has
    no backward: gradients stop at every 4-bit layer, so the LoRA matrices below the last layer never learn
    (PyTorch only warns "bitsandbytes::gemv_4bit: an autograd kernel was not registered"). No effect on GPUs.
    """
    import bitsandbytes

    changed = 0
    for module in model.modules():
        repacks = getattr(module, "support_avx512bf16_for_cpu", False)
        if isinstance(module, bitsandbytes.nn.Linear4bit) and repacks:
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
