"""Counting parameters and bytes, estimating training memory, and measuring it per phase."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psutil
import torch
from transformers import TrainerCallback

QUANT_CONSTANTS_KEY = "4-bit quant. constants"

# Optimizer state bytes per trainable parameter. PyTorch's AdamW keeps two moments in the parameter's
# own dtype (2 x 4 bytes for float32 weights, 2 x 2 for bfloat16): None below means "2 x that dtype".
# bitsandbytes' 32-bit versions always keep float32 moments; its 8-bit versions keep 1 byte each
# (plus a small per-block scale we ignore).
OPTIMIZER_BYTES_PER_PARAM: dict[str, int | None] = {
    "adamw": None,
    "adamw_torch": None,
    "adamw_torch_fused": None,
    "paged_adamw_32bit": 8,
    "adamw_8bit": 2,
    "adamw_bnb_8bit": 2,
    "paged_adamw_8bit": 2,
    "sgd": 0,
}


def format_bytes(n: int) -> str:
    """Human-readable size: '512 B', '3.50 KiB', '12.3 MiB', '1.23 GiB'."""
    if n < 0:
        return "-" + format_bytes(-n)
    if n < 1024:
        return f"{int(n)} B"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.2f} {unit}" if value < 100 else f"{value:.1f} {unit}"
    return f"{int(n)} B"  # unreachable, keeps type checkers happy


def _is_4bit(tensor: torch.Tensor) -> bool:
    """True for a bitsandbytes Params4bit that has been quantized (it then carries a quant_state)."""
    return bool(getattr(tensor, "bnb_quantized", False)) and getattr(tensor, "quant_state", None) is not None


def _unique_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Drop tensors that share memory with one already seen (tied weights), keyed by address and size."""
    seen = set()
    unique = []
    for tensor in tensors:
        # A meta tensor (or an empty one) has no memory address: the same object is the same tensor.
        key = (str(tensor.device), tensor.data_ptr(), tensor.nbytes) if tensor.data_ptr() != 0 else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        unique.append(tensor)
    return unique


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of the model, each block of memory once."""
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    buffers = [b for _, b in model.named_buffers(remove_duplicate=False)]
    return _unique_tensors(params + buffers)


def _quant_constants(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The small tensors bitsandbytes keeps next to a 4-bit weight: scales (absmax), code book, offset."""
    state = tensor.quant_state
    found = [state.absmax, state.code, getattr(state, "offset", None)]
    nested = getattr(state, "state2", None)  # compress_statistics=True: the absmax are quantized too
    if nested is not None:
        found += [nested.absmax, nested.code]
    return [t for t in found if isinstance(t, torch.Tensor)]


def bytes_by_dtype(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters and buffers by dtype ('4-bit nf4' for bitsandbytes weights)."""
    totals: dict[str, int] = {}
    constants = []
    for tensor in _model_tensors(model):
        if _is_4bit(tensor):
            # Stored as packed uint8, two 4-bit values per byte.
            key = f"4-bit {tensor.quant_type}"
            constants += _quant_constants(tensor)
        else:
            key = str(tensor.dtype).removeprefix("torch.")
        totals[key] = totals.get(key, 0) + tensor.nbytes
    constants = _unique_tensors(constants)
    if constants:
        totals[QUANT_CONSTANTS_KEY] = sum(t.nbytes for t in constants)
    return totals


def _num_elements(param: torch.Tensor) -> int:
    """The true number of values in a parameter (a 4-bit weight packs two per byte)."""
    if _is_4bit(param):
        return param.quant_state.shape.numel()
    return param.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights once, 4-bit weights by their real size."""
    params = _unique_tensors(p for _, p in model.named_parameters(remove_duplicate=False))
    total = sum(_num_elements(p) for p in params)
    trainable = sum(_num_elements(p) for p in params if p.requires_grad)
    return trainable, total


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes the gradients of the trainable parameters take (same dtype as each parameter)."""
    params = _unique_tensors(p for _, p in model.named_parameters(remove_duplicate=False))
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of all tensors the optimizer keeps (e.g. AdamW's two moments and its 'step' counters)."""
    tensors = []
    for state in optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return sum(t.nbytes for t in _unique_tensors(tensors))


def memory_breakdown(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the weights, the gradients and the optimizer states, as they are now (after training)."""
    return {
        "weights": sum(bytes_by_dtype(model).values()),
        "gradients": gradient_bytes(model),
        "optimizer_states": optimizer_state_bytes(optimizer),
    }


def estimate_training_memory(
    total_params: int,
    trainable_params: int,
    weight_bytes: int,
    *,
    grad_bytes_per_param: int = 4,
    optimizer: str = "adamw",
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    vocab_size: int,
    num_heads: int,
    activation_bytes: int = 4,
    residual_bytes: int | None = None,
    loss_tokens: int | None = None,
    attention: str = "sdpa",
    gradient_checkpointing: bool = False,
    autocast_copy_params: int = 0,
    embedding_params: int = 0,
) -> dict[str, int]:
    """Rough analytic estimate of training memory in bytes: weights, gradients, optimizer states, activations.

    weights:          weight_bytes, as given (e.g. sum(bytes_by_dtype(model).values())).
    gradients:        trainable_params * grad_bytes_per_param (gradients have the trainable weights' dtype).
    optimizer_states: trainable_params * OPTIMIZER_BYTES_PER_PARAM[optimizer]
                      (PyTorch's adamw: 2 * grad_bytes_per_param, so 8 for float32 weights and 4 for
                      bfloat16 ones; paged_adamw_32bit 8; the 8-bit AdamWs 2; sgd 0).
                      With an 8-bit bitsandbytes optimizer, the Trainer keeps nn.Embedding weights in 32-bit
                      states (8 bytes each): pass their trainable count as embedding_params (measured on an
                      H200: 3.80 GiB of states for Llama 3.2 1B, not the 2.30 GiB of 2 bytes per parameter).
    activations:      what autograd keeps for the backward pass, for one micro-batch of batch * seq tokens.
                      Per decoder layer and token:

                          10 * hidden * residual_bytes + 4 * intermediate * activation_bytes

                      10 * hidden: two RMSNorms (input, float32 copy, output), the q, k, v projections (k and
                      v are smaller with grouped-query attention, so an upper bound) and the attention output,
                      in the residual stream's dtype: residual_bytes, which is 4 when the embedding is float32
                      (full fine-tuning's float32 weights; QLoRA after prepare_model_for_kbit_training) even
                      under 16-bit autocast, and activation_bytes otherwise (the default).
                      4 * intermediate: the MLP's gate, up, SiLU(gate) and product, in the compute dtype.
                      attention="eager" adds num_heads * seq * activation_bytes for the attention
                      probabilities; SDPA and flash attention keep none.
                      Times num_layers, plus the language-model head's scores:

                          min(loss_tokens, 32768) * vocab * (activation_bytes + 8)

                      TRL's SFTTrainer projects through the head in tiles of 32,768 positions (a 16-bit tile,
                      its float32 log-softmax and gradient). On CUDA it scores only positions with a label
                      (pass their count in the largest micro-batch as loss_tokens); on a CPU it scores every
                      position (loss_tokens=None, the default: batch * seq).
                      With gradient checkpointing only each layer's input is kept (num_layers * batch * seq *
                      hidden * residual_bytes), and during the backward pass of one layer its activations are
                      rebuilt and their gradients made: twice one layer's activations.
                      Measured against this on an H200 (Llama 3.2 1B shapes, batch 8 x up to 2,047
                      tokens, results/benchmark.json): peaks 0.83-1.21x the estimate for full
                      fine-tuning, LoRA and QLoRA.
    autocast_copies:  with float32 weights under bf16/fp16 autocast, the 16-bit copy autocast makes of each
                      weight for its matmul, kept until backward: autocast_copy_params * 2 (pass the number
                      of float32 weights that feed matmuls; 0, the default, leaves this part out).
    total_on_gpu:     paged optimizers only: the total without their states, which bitsandbytes keeps in
                      managed memory the GPU pages out to CPU memory under pressure (fit_verdict uses it).
    Not counted: the CUDA context (~0.3-0.5 GiB), allocator fragmentation (reserved above allocated), LoRA
    dropout's masks and temporary buffers. At batch 1 x 2,047 tokens on the H200 the peak was about 0.85 GiB
    above this, not yet explained (scripts/gpu_bench.sh records what is live there).
    """
    optimizer = getattr(optimizer, "value", optimizer)  # accept TrainingArguments.optim (an enum) too
    if optimizer not in OPTIMIZER_BYTES_PER_PARAM:
        raise ValueError(f"Unknown optimizer {optimizer!r}: use one of {sorted(OPTIMIZER_BYTES_PER_PARAM)}.")
    if attention not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"Unknown attention {attention!r}: use 'sdpa', 'eager' or 'flash_attention_2'.")
    if trainable_params > total_params:
        raise ValueError(
            f"trainable_params ({trainable_params:,}) is larger than total_params ({total_params:,}). "
            "count_parameters() returns (trainable, total) while this function takes total first: "
            "pass them by name: total_params=..., trainable_params=..."
        )
    state_bytes = OPTIMIZER_BYTES_PER_PARAM[optimizer]
    if state_bytes is None:  # PyTorch AdamW: two moments in the weights' dtype
        state_bytes = 2 * grad_bytes_per_param
    embedding_states = 0
    if "8bit" in optimizer:  # the Trainer registers nn.Embedding weights for 32-bit states
        embedding_states = embedding_params * (8 - state_bytes)
    residual_bytes = residual_bytes or activation_bytes
    tokens = batch_size * seq_len
    per_token = 10 * hidden_size * residual_bytes + 4 * intermediate_size * activation_bytes
    if attention == "eager":
        per_token += num_heads * seq_len * activation_bytes
    per_layer = tokens * per_token
    scored = min(tokens if loss_tokens is None else loss_tokens, 32768)
    logits = scored * vocab_size * (activation_bytes + 8)
    if gradient_checkpointing:
        layer_inputs = num_layers * tokens * hidden_size * residual_bytes
        activations = layer_inputs + 2 * per_layer + logits
    else:
        activations = num_layers * per_layer + logits

    estimate = {
        "weights": int(weight_bytes),
        "gradients": trainable_params * grad_bytes_per_param,
        "optimizer_states": trainable_params * state_bytes + embedding_states,
        "activations": activations,
    }
    if autocast_copy_params:
        estimate["autocast_copies"] = autocast_copy_params * 2
    estimate["total"] = sum(estimate.values())
    # bitsandbytes keeps these in managed memory, paged out to the CPU when short
    if optimizer.startswith("paged_"):
        estimate["total_on_gpu"] = estimate["total"] - estimate["optimizer_states"]
    return estimate


def shape_of(config) -> dict[str, int]:
    """The shape arguments of estimate_training_memory, read from a transformers model config."""
    return {
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "num_heads": config.num_attention_heads,
    }


def estimate_for_model(
    model: torch.nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    optimizer: str = "adamw",
    compute_bytes: int = 4,
    loss_tokens: int | None = None,
    gradient_checkpointing: bool = False,
) -> dict[str, int]:
    """estimate_training_memory for a loaded model, with its shapes, parameter counts and dtypes."""
    cfg = model.config
    trainable, total = count_parameters(model)
    params = _unique_tensors(p for _, p in model.named_parameters(remove_duplicate=False))
    attention = getattr(cfg, "_attn_implementation", None)
    return estimate_training_memory(
        total_params=total,
        trainable_params=trainable,
        weight_bytes=sum(bytes_by_dtype(model).values()),
        grad_bytes_per_param=next((p.element_size() for p in params if p.requires_grad), 4),
        optimizer=optimizer,
        batch_size=batch_size,
        seq_len=seq_len,
        **shape_of(cfg),
        activation_bytes=compute_bytes,
        residual_bytes=model.get_input_embeddings().weight.element_size(),  # the residual stream's dtype
        loss_tokens=loss_tokens,
        attention="eager" if attention == "eager" else "sdpa",
        gradient_checkpointing=gradient_checkpointing,
    )


def estimate_weight_bytes(
    model: torch.nn.Module,
    *,
    dtype_bytes: int = 2,
    quantize_linear: bool = False,
    blocksize: int = 64,
    double_quant: bool = True,
) -> dict[str, int]:
    """Bytes the weights take in a dtype of dtype_bytes, optionally with the linear layers in 4-bit NF4.

    Works on a model built on the meta device (nothing allocated). As transformers does with a
    BitsAndBytesConfig, only nn.Linear layers are quantized, never the output layer (lm_head, tied to the
    embedding in Llama 3.2) nor the embedding and norms. A 4-bit matrix of n values takes n / 2 bytes
    plus its constants: one scale per block of `blocksize` values (float32, or 1 byte with double
    quantization, which adds a float32 scale per 256 blocks and a 256-entry code book) and the NF4 code book.
    """
    linear, other, constants = 0, 0, 0
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():  # tied weights are listed once
        module_name = name.rpartition(".")[0]
        n = param.numel()
        is_linear = (
            isinstance(modules.get(module_name), torch.nn.Linear) and not module_name.endswith("lm_head")
        )
        if quantize_linear and is_linear:
            linear += (n + 1) // 2
            blocks = -(-n // blocksize)
            if double_quant:
                # uint8 scales, their scales, code, offset
                constants += blocks + 4 * -(-blocks // 256) + 4 * 256 + 4
            else:
                constants += 4 * blocks
            constants += 4 * 16  # the 16 NF4 levels
        else:
            other += n * dtype_bytes
    parts = {f"{8 * dtype_bytes}-bit (embeddings, norms{', linear' if not quantize_linear else ''})": other}
    if quantize_linear:
        parts["4-bit nf4 (linear layers)"] = linear
        parts[QUANT_CONSTANTS_KEY] = constants
    parts["total"] = sum(parts.values())
    return parts



class MemoryTracker:
    """Measure peak memory per named phase: CUDA allocator statistics on a GPU, process RSS elsewhere.

    tracker = MemoryTracker("cuda")
    with tracker.phase("load"):
        model = AutoModelForCausalLM.from_pretrained(...)
    trainer = SFTTrainer(..., callbacks=[tracker.callback("train")])  # measures trainer.train()
    tracker.record("train", gradients=gradient_bytes(model))
    print(tracker.table())
    """

    def __init__(self, device_type: str, sample_interval_s: float = 0.02) -> None:
        if device_type not in ("cuda", "mps", "cpu"):
            raise ValueError(f"Unknown device_type {device_type!r}: use 'cuda', 'mps' or 'cpu'.")
        if device_type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("MemoryTracker('cuda') but torch sees no CUDA GPU: use MemoryTracker('cpu').")
        self.device_type = device_type
        self.sample_interval_s = sample_interval_s
        self.results: dict[str, dict] = {}
        self._open: dict[str, tuple] = {}  # phases being measured: start bytes, peak so far, sampler

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the code inside the with-block; the measurement is kept even if it raises."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def callback(self, name: str = "train") -> TrainerCallback:
        """A TrainerCallback that measures one phase from the start of trainer.train() to its end."""
        return MeasureMemory(self, name)

    def start(self, name: str) -> None:
        """Start measuring a phase: reset the CUDA allocator's peaks, or start sampling the process memory."""
        self.stop(name)  # the same phase left open by an exception (a callback's phase has no `finally`)
        if self.device_type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._open[name] = (torch.cuda.memory_allocated(), None, None)
            return
        process = psutil.Process()
        start = process.memory_info().rss
        peak = [start]  # a list so the thread can update it
        stopped = threading.Event()

        def sample() -> None:
            while not stopped.wait(self.sample_interval_s):
                peak[0] = max(peak[0], process.memory_info().rss)

        thread = threading.Thread(target=sample, name=f"MemoryTracker-{name}", daemon=True)
        thread.start()
        self._open[name] = (start, peak, (stopped, thread))

    def stop(self, name: str) -> None:
        """Stop measuring a phase and keep its start, peak and end."""
        if name not in self._open:
            return
        start, peak, sampler = self._open.pop(name)
        if self.device_type == "cuda":
            torch.cuda.synchronize()
            self.results.setdefault(name, {}).update(
                measured="cuda max_memory_allocated",
                start_bytes=start,
                peak_bytes=torch.cuda.max_memory_allocated(),
                end_bytes=torch.cuda.memory_allocated(),
                peak_reserved_bytes=torch.cuda.max_memory_reserved(),
            )
            return
        stopped, thread = sampler
        stopped.set()
        thread.join()
        end = psutil.Process().memory_info().rss
        self.results.setdefault(name, {}).update(
            measured="process RSS (psutil)", start_bytes=start, peak_bytes=max(peak[0], end), end_bytes=end
        )

    def record(self, phase: str, **extra: int | dict[str, int]) -> None:
        """Attach byte counts to a phase: record('train', weights=bytes_by_dtype(model), gradients=...)."""
        self.results.setdefault(phase, {}).update(extra)

    def table(self) -> str:
        """All phases as a plain-text table (start, peak, peak - start, end), recorded byte counts below."""
        if not self.results:
            return "(no phases measured yet: wrap code in `with tracker.phase('name'):`)"
        header = f"{'phase':<16} {'start':>11} {'peak':>11} {'peak-start':>11} {'end':>11}  measured"
        lines = [header, "-" * len(header)]
        for name, result in self.results.items():
            if "peak_bytes" in result:
                start, peak, end = result["start_bytes"], result["peak_bytes"], result["end_bytes"]
                lines.append(
                    f"{name:<16} {format_bytes(start):>11} {format_bytes(peak):>11} "
                    f"{format_bytes(peak - start):>11} {format_bytes(end):>11}  {result['measured']}"
                )
                if "peak_reserved_bytes" in result:
                    lines.append(
                        f"{'':<16} peak reserved by the CUDA allocator: "
                        f"{format_bytes(result['peak_reserved_bytes'])}"
                    )
            else:
                lines.append(f"{name:<16} (not measured, only recorded values)")
            for key, value in result.items():
                if key in ("measured", "start_bytes", "peak_bytes", "end_bytes", "peak_reserved_bytes"):
                    continue
                lines.append(f"{'':<16} {key}: {_format_value(value)}")
        return "\n".join(lines)


def _format_value(value: object) -> str:
    """Byte counts as sizes (also inside a dict), anything else as str()."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return format_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_value(v)}" for k, v in value.items())
    return str(value)


class MeasureMemory(TrainerCallback):
    """Measures one MemoryTracker phase from trainer.train()'s start to its end (MemoryTracker.callback)."""

    def __init__(self, tracker: MemoryTracker, name: str) -> None:
        self.tracker, self.name = tracker, name

    def on_train_begin(self, args, state, control, **kwargs):
        self.tracker.start(self.name)

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.stop(self.name)
