"""Will it fit? Training-memory estimates per method for published model shapes, built on the meta device."""

from __future__ import annotations

import functools
import json

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from helpers.chat import CHAT_TEMPLATE_KWARGS
from helpers.data import load_dataset_any, to_conversational
from helpers.masking import tokenize_with_mask
from helpers.memory import (
    count_parameters,
    estimate_training_memory,
    estimate_weight_bytes,
    format_bytes,
    shape_of,
)
from helpers.recipe import lora_config
from helpers.shapes import LLAMA_3_2_1B, llama_config
from helpers.stand_in import llama_3_2_tokenizer

# GPU memory roughly as nvidia-smi reports it, in MiB, and whether the GPU computes in bf16 natively.
GPUS = {
    "T4 16 GB": (15360, False),
    "L4 24 GB": (23034, True),
    "RTX 4090 24 GB": (24564, True),
    "A100 40 GB": (40960, True),
    "A100 80 GB": (81920, True),
    "H100 80 GB": (81559, True),
}

# What each method trains and keeps, as the course's notebooks do it on a GPU.
METHODS = {
    "full": "all weights; float32 master weights and gradients under bf16 (fp16 on a T4) autocast, "
    "PyTorch AdamW (float32 moments), 16-bit autocast copies of the weights; no gradient checkpointing",
    "full, 8-bit": "as full, with bitsandbytes' paged 8-bit AdamW (1 byte per moment) "
    "and gradient checkpointing",
    "lora": "bf16 frozen base; a float32 adapter (the rank and layers notebook 2 used) with PyTorch AdamW; "
    "gradient checkpointing only where the batch would not fit without it (as notebooks 2 and 3)",
    "qlora": "NF4 base, embedding and norms in the compute dtype (bf16; fp16 on a T4); "
    "a float32 adapter (the rank and layers notebook 3 used); paged 8-bit AdamW; "
    "gradient checkpointing as for lora",
}

# Notebook 1's memory plans for full fine-tuning, tried in order (its section 5 writes them out; a test keeps
# the two equal). "pure bf16" is its last resort, offered only where the GPU computes in bf16.
FULL_PLANS = [
    {"name": "plain", "weights": "float32", "optim": "adamw_torch", "micro_batch": 8, "accumulation": 1,
     "checkpointing": False},
    {"name": "low memory", "weights": "float32", "optim": "paged_adamw_8bit", "micro_batch": 2,
     "accumulation": 4, "checkpointing": True},
    {"name": "pure bf16", "weights": "bfloat16", "optim": "paged_adamw_8bit", "micro_batch": 2,
     "accumulation": 4, "checkpointing": True},
]
ADAPTER_BATCH = 8  # examples per step in notebooks 2 and 3
RESERVE_BYTES = 2**29  # the CUDA context takes about 0.5 GiB before any tensor


def meta_model(spec: dict) -> torch.nn.Module:
    """A model of this shape on the meta device: exact parameter counts, no memory, nothing downloaded."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(llama_config(spec))


def lora_trainable_params(spec: dict, r: int, target_modules: str | list[str] = "all-linear") -> int:
    """Trainable parameters PEFT creates for this rank and these targets, counted on the meta device."""
    targets = target_modules if isinstance(target_modules, str) else tuple(target_modules)
    return _peft_count(json.dumps(spec, sort_keys=True), r, targets)


@functools.cache  # a second call with the same shape, rank and targets is free (PEFT takes up to 1.5 s on 8B)
def _peft_count(spec_json: str, r: int, targets: str | tuple[str, ...]) -> int:
    """lora_trainable_params for a shape given as JSON (hashable, so the count is computed once)."""
    config = lora_config(
        r=r, lora_alpha=2 * r, target_modules=targets if isinstance(targets, str) else list(targets)
    )
    with torch.device("meta"):
        return count_parameters(get_peft_model(meta_model(json.loads(spec_json)), config))[0]


def method_estimate(
    spec: dict,
    method: str,
    *,
    seq_len: int,
    batch_size: int,
    bf16: bool = True,
    lora_r: int = 16,
    target_modules: str | list[str] = "all-linear",
    gradient_checkpointing: bool = True,
    loss_tokens: int | None = None,
    upcast: bool = False,
    adapter_fp32: bool = True,
) -> dict[str, int]:
    """Estimated training memory (weights, gradients, optimizer states, activations, total) of one method.

    loss_tokens: labelled positions in the largest micro-batch (what TRL's LM head scores on CUDA); None: all.
    upcast: QLoRA keeps PEFT's float32 embedding and norms (False: 16-bit, as the course).
    adapter_fp32: QLoRA's adapter in float32 (the course); False: bf16 under bf16, as SFTTrainer casts it.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    model = meta_model(spec)
    total = count_parameters(model)[1]
    copies = 0
    if method.startswith("full"):  # float32 master weights: pure 16-bit weights would lose small updates
        trainable, weight_bytes, grad_bytes, copies = total, total * 4, 4, total
        optimizer = "paged_adamw_8bit" if method == "full, 8-bit" else "adamw"
    elif method == "lora":
        trainable, grad_bytes, optimizer = lora_trainable_params(spec, lora_r, target_modules), 4, "adamw"
        weight_bytes = total * 2 + trainable * 4  # bf16 base, float32 adapter
    else:  # SFTTrainer casts the adapter to bf16; the course casts it back to float32 (notebook 3)
        adapter_bytes = 2 if bf16 and not adapter_fp32 else 4
        trainable = lora_trainable_params(spec, lora_r, target_modules)
        grad_bytes, optimizer = adapter_bytes, "paged_adamw_8bit"
        other_bytes = 4 if upcast else 2
        weight_bytes = (
            estimate_weight_bytes(model, dtype_bytes=other_bytes, quantize_linear=True)["total"]
            + trainable * adapter_bytes
        )
    c = model.config
    return estimate_training_memory(
        total_params=total,
        trainable_params=trainable,
        weight_bytes=weight_bytes,
        grad_bytes_per_param=grad_bytes,
        optimizer=optimizer,
        batch_size=batch_size,
        seq_len=seq_len,
        **shape_of(c),
        activation_bytes=2,
        # 4 bytes where the embedding (and so the residual stream) is float32
        residual_bytes=4 if method.startswith("full") or (method == "qlora" and upcast) else 2,
        loss_tokens=loss_tokens,
        gradient_checkpointing=gradient_checkpointing,
        autocast_copy_params=copies,
        # the embedding keeps 32-bit states under 8-bit AdamW
        embedding_params=c.vocab_size * c.hidden_size if method.startswith("full") else 0,
    )


def planned_estimate(
    spec: dict,
    method: str,
    capacity_bytes: int,
    *,
    where: str,
    seq_len: int,
    batch_size: int,
    bf16: bool = True,
    reserve_bytes: int = RESERVE_BYTES,
    lora_r: int = 16,
    target_modules: str | list[str] = "all-linear",
    loss_tokens: int | None = None,
) -> tuple[bool, dict[str, int], bool]:
    """(fits, estimate, gradient checkpointing) under the memory plan the notebooks would choose on this GPU.

    LoRA and QLoRA (notebooks 2 and 3): no checkpointing if the batch fits without it, else checkpointing.
    Full fine-tuning (notebook 1): "full" is its plain plan (no checkpointing),
    "full, 8-bit" its low-memory one.
    loss_tokens: positions the LM head scores in the batch (on CUDA, the labelled ones); None: every position.
    """
    options = {"full": [False], "full, 8-bit": [True]}.get(method, [False, True])
    for checkpointing in options:
        estimate = method_estimate(spec, method, seq_len=seq_len, batch_size=batch_size, bf16=bf16,
                                   gradient_checkpointing=checkpointing, lora_r=lora_r,
                                   target_modules=target_modules, loss_tokens=loss_tokens)
        if fit_verdict(estimate, capacity_bytes, where=where, reserve_bytes=reserve_bytes)[0]:
            return True, estimate, checkpointing
    return False, estimate, checkpointing


def regime_of(gpu: str) -> str:
    """The GPU check's precision regime for one of GPUS: "native" (bf16 compute) or "t4" (fp16, as a T4)."""
    return "native" if GPUS[gpu][1] else "t4"


def choose_full_plan(
    plans: list[dict], gpu: str, *, seq_len: int, longest_reply: int, spec: dict = LLAMA_3_2_1B
) -> dict:
    """Notebook 1's memory plan for full fine-tuning on one of GPUS: the first that fits, each at its batch.

    Each plan is estimated at its micro_batch examples of seq_len tokens, the LM head scoring micro_batch x
    longest_reply positions (on CUDA TRL scores only the labelled ones). Where the GPU has no bf16, plans with
    16-bit weights are skipped, as notebook 1 skips them; where it has, they are listed but not estimated
    (method_estimate keeps float32 master weights).
    """
    if not any(plan["weights"] == "float32" for plan in plans):
        raise ValueError("choose_full_plan needs a plan with float32 weights, as notebook 1's first two are.")
    mib, has_bf16 = GPUS[gpu]
    tried = []
    for plan in plans:
        batch = plan["micro_batch"]
        if plan["weights"] != "float32":
            if has_bf16:
                tried.append({"name": plan["name"], "micro_batch": batch, "fits": False,
                              "why": "not estimated here (16-bit weights)"})
            continue
        method = "full, 8-bit" if "8bit" in plan["optim"] else "full"
        estimate = method_estimate(spec, method, seq_len=seq_len, batch_size=batch, bf16=has_bf16,
                                   gradient_checkpointing=plan["checkpointing"],
                                   loss_tokens=batch * longest_reply)
        fits, why = fit_verdict(estimate, mib * 2**20, where=gpu, reserve_bytes=RESERVE_BYTES)
        tried.append({"name": plan["name"], "micro_batch": batch, "fits": fits, "why": why})
        chosen = {"plan": method, "plan_name": plan["name"], "batch": batch, "fits": fits,
                  "estimate": estimate}
        if fits:
            break
    on_gpu = chosen["estimate"].get("total_on_gpu", chosen["estimate"]["total"])
    return {**chosen, "method": "full", "regime": regime_of(gpu), "seq_len": seq_len, "need_bytes": on_gpu,
            "paged_bytes": chosen["estimate"]["total"] - on_gpu, "tried": tried,
            "source": f"notebook 1's {chosen['plan_name']} plan"}


def notebook_plans(
    gpus: list[str],
    *,
    seq_len: int,
    longest_reply: int,
    spec: dict = LLAMA_3_2_1B,
    lora_r: int = 16,
    target_modules: str | list[str] = "all-linear",
) -> dict[str, dict[str, dict]]:
    """Per GPU, the plan each training notebook would choose there and its estimate, at the notebook's batch.

    Full fine-tuning: choose_full_plan over FULL_PLANS. LoRA and QLoRA: ADAPTER_BATCH examples, gradient
    checkpointing only where the batch does not fit without it. Every method at seq_len tokens per example,
    the LM head scoring each example's longest_reply positions.
    """
    answer = {}
    for gpu in gpus:
        mib, has_bf16 = GPUS[gpu]
        options = {"full": choose_full_plan(FULL_PLANS, gpu, seq_len=seq_len, longest_reply=longest_reply,
                                            spec=spec)}
        for number, method in ((2, "lora"), (3, "qlora")):
            fits, estimate, checkpointing = planned_estimate(
                spec, method, mib * 2**20, where=gpu, seq_len=seq_len, batch_size=ADAPTER_BATCH,
                bf16=has_bf16, lora_r=lora_r, target_modules=target_modules,
                loss_tokens=ADAPTER_BATCH * longest_reply,
            )
            on_gpu = estimate.get("total_on_gpu", estimate["total"])
            name = "gradient checkpointing" if checkpointing else "no checkpointing"
            options[method] = {
                "method": method, "plan": method, "plan_name": name, "batch": ADAPTER_BATCH, "fits": fits,
                "estimate": estimate, "regime": regime_of(gpu), "seq_len": seq_len, "need_bytes": on_gpu,
                "paged_bytes": estimate["total"] - on_gpu, "source": f"notebook {number}'s plan ({name})",
            }
        answer[gpu] = options
    return answer


@functools.cache
def course_data_shape(train_examples: int) -> tuple[int, int]:
    """(longest example, longest reply) in tokens, as Llama 3.2's template writes the first train_examples."""
    raw = load_dataset_any("support", None, {"train": train_examples})
    dataset = to_conversational(raw, chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    tokenizer = llama_3_2_tokenizer()
    rows = [tokenize_with_mask(tokenizer, example) for example in dataset["train"]]
    return max(len(ids) for ids, _ in rows), max(sum(t != -100 for t in labels) for _, labels in rows)


def run_estimate(result: dict, todays_recipe: bool = False) -> dict[str, int]:
    """Today's estimate of a notebook's run at Llama 3.2 1B's shapes, from the plan and data it recorded.

    Older runs record no memory_plan: their batch is measured from the course data's first examples. QLoRA
    runs that record no embedding_dtype (made before the recipe kept the embedding and norms in the
    compute dtype) get PEFT's and TRL's dtypes (float32 embedding and norms, bf16 adapters under bf16),
    unless todays_recipe asks for notebook 3's (16-bit embedding and norms, float32 adapters) with the
    same plan and data.
    """
    config, method, bf16 = result["config"], result["method"], result["dtype"] == "bf16"
    shape = config.get("memory_plan") or dict(
        zip(("seq_len", "longest_reply"), course_data_shape(config["train_examples"]), strict=True)
    )
    kwargs = {}
    if method == "full":
        plan = config["plan"]
        name = "full, 8-bit" if "8bit" in plan["optim"] else "full"
        batch, checkpointing = min(plan["micro_batch"], config["train_examples"]), plan["checkpointing"]
    else:
        name, batch = method, shape.get("batch", min(8, config["train_examples"]))
        checkpointing = config.get("memory_plan", {}).get("name") == "gradient checkpointing"
    if method == "qlora" and "embedding_dtype" not in config and not todays_recipe:
        kwargs = {"upcast": True, "adapter_fp32": not bf16}
    # the run's own adapter (older runs record no rank or targets: they trained r=16 on all linear layers)
    if method != "full":
        kwargs.update(
            lora_r=config.get("lora_r", 16), target_modules=config.get("target_modules", "all-linear")
        )
    return method_estimate(
        LLAMA_3_2_1B,
        name,
        seq_len=shape["seq_len"],
        batch_size=batch,
        bf16=bf16,
        gradient_checkpointing=checkpointing,
        loss_tokens=batch * shape["longest_reply"],
        **kwargs,
    )


def fit_verdict(
    estimate: dict[str, int], capacity_bytes: int, *, where: str, reserve_bytes: int = 0, margin: float = 0.1
) -> tuple[bool, str]:
    """Whether an estimate (with a "total") fits in capacity_bytes with a margin: (fits, a sentence why)."""
    usable = int(capacity_bytes * (1 - margin)) - reserve_bytes
    parts = sorted(((k, v) for k, v in estimate.items() if not k.startswith("total")), key=lambda kv: -kv[1])
    largest = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts[:2])
    on_gpu = estimate.get("total_on_gpu", estimate["total"])
    need = f"needs about {format_bytes(on_gpu)} (largest: {largest})"
    if on_gpu != estimate["total"]:
        paged = format_bytes(estimate["total"] - on_gpu)
        need += f", plus {paged} of paged optimizer states that can move to CPU memory"
    room = f"{format_bytes(usable)} usable of {format_bytes(capacity_bytes)}"
    if on_gpu <= usable:
        return True, f"fits on {where}: {need}; {room}."
    return False, f"does not fit on {where}: {need}; only {room}."


def choose_plan(
    estimates: dict[str, dict[str, int]], capacity_bytes: int, *, where: str, reserve_bytes: int = 0
) -> str:
    """The first plan whose estimate fits, printing each verdict; MemoryError with the options if none."""
    verdicts = []
    for name, estimate in estimates.items():
        fits, why = fit_verdict(estimate, capacity_bytes, where=where, reserve_bytes=reserve_bytes)
        print(f"{name:>12}: {why}")
        if fits:
            return name
        verdicts.append(f"{name} {why}")
    raise MemoryError(
        f"No plan fits on {where}: "
        + " ".join(verdicts)
        + " Fix: lower MAX_LENGTH or the batch size, turn on gradient checkpointing, "
        "train with LoRA (02_lora.ipynb) or QLoRA (4-bit base weights) instead of full fine-tuning, "
        "or use a GPU with more memory."
    )
