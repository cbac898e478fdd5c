"""The course's training recipe against the pipeline a learner would copy, one knob at a time.

    python scripts/benchmark.py          # tiny profile, every CPU row -> results/benchmark.json (make bench)
    python scripts/benchmark.py --smoke  # two rows, a few steps: checks that the benchmark runs (CI)
    # on a GPU: conversations up to 2048 tokens
    python scripts/benchmark.py --profile llama-3.2-1b-random --long --rows gpu

Every row trains the same examples (the first steps x batch of the training split, each seen once), from the
same seed (one row per method uses another, to show how much the seed alone moves a row), so every row sees
the same real tokens; it runs in its own process, so peak memory (RSS on a CPU; allocated and reserved on
CUDA) is that row's alone. A row reports real (non-padding) tokens per second after warm-up, the share of
computed positions that were padding, peak memory, the mean training loss and the eval loss after training.

"naive" is what a learner gets from TRL's documented SFT example: SFTConfig defaults (gradient checkpointing
on, random batches padded to their longest example) and PEFT's usual LoraConfig (lora_dropout=0.05). "course"
is the recipe notebooks 1 to 3 use. The rows between change one knob at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from helpers import ROOT

NAIVE = {  # TRL's SFTConfig defaults and PEFT's usual LoraConfig
    "gradient_checkpointing": True,
    "lora_dropout": 0.05,
    # random batches padded to their longest; "group_by_length" (transformers' sampler, each pool
    # longest-first) or "similar_length" (helpers.data.batches_of_similar_length: the batches in random order)
    "sampling": "random",
    "padding_free": False,
    "attention": "sdpa",
    "optim": "adamw_torch",
    "torch_compile": False,
    "liger": False,
    "batch": 8,
    "accumulation": 1,
    # QLoRA: prepare_model_for_kbit_training's float32 embedding and norms are kept (False: compute dtype)
    "upcast": True,
    # QLoRA: SFTTrainer's bf16 adapters are kept under bf16 (True: float32, as the course)
    "adapter_fp32": False,
    # True: on a CPU too, TRL's LM head scores only the labelled positions, as it does on CUDA
    "labelled_head": False,
    "seed": 42,  # data order, initialisation; "naive, seed 43" shows how much a row moves from the seed alone
}
COURSE = {
    **NAIVE,
    "gradient_checkpointing": False,
    "lora_dropout": 0.0,
    "sampling": "similar_length",
    "upcast": False,
    "adapter_fp32": True,
}
# What gradient checkpointing costs: the course's memory plan turns it on where the batch would not fit
CHECKPOINTED = ("course, gradient checkpointing", {**COURSE, "gradient_checkpointing": True})
# QLoRA as PEFT and TRL leave it: float32 embedding and norms, bf16 adapters (the course's earlier recipe)
PEFT_UPCAST = (
    "course, PEFT's float32 embedding and norms",
    {**COURSE, "upcast": True, "adapter_fp32": False},
)

# Unsloth's Llama 3.2 1B notebook: r=16 on all linear layers, batch 1 x 8, gradient checkpointing
UNSLOTH = {**COURSE, "gradient_checkpointing": True, "batch": 1, "accumulation": 8}

# On a CPU, TRL 1.16 projects every position through the LM head, prompt and padding included, because on
# devices without Triton it keeps the tiles' shapes fixed (trl/trainer/utils.py, add_fused_lm_head); on CUDA
# it scores only the labelled positions. This row patches TRL to do on the CPU what it does on CUDA; the
# course itself does not patch TRL.
HEAD_ROW = ("course, LM head on labelled positions only (TRL patched)", {**COURSE, "labelled_head": True})

# notebook 1's "low memory" plan, which it uses where the plain one would not fit (a T4, a 24 GB card)
LOW_MEMORY_PLAN = (
    "course, low-memory plan",
    {**COURSE, "optim": "paged_adamw_8bit", "gradient_checkpointing": True, "batch": 2, "accumulation": 4},
)

# (row name, what changes from the row before or from "course")
CPU_ROWS = {
    "full": [
        ("naive", {}),
        ("naive, seed 43", {"seed": 43}),
        ("no gradient checkpointing", {"gradient_checkpointing": False}),
        ("+ transformers' group_by_length", {"gradient_checkpointing": False, "sampling": "group_by_length"}),
        ("course", COURSE),
        CHECKPOINTED,
        HEAD_ROW,
    ],
    "lora": [
        ("naive", {}),
        ("naive, seed 43", {"seed": 43}),
        ("no gradient checkpointing", {"gradient_checkpointing": False}),
        ("+ lora_dropout 0", {"gradient_checkpointing": False, "lora_dropout": 0.0}),
        ("+ transformers' group_by_length", {**COURSE, "sampling": "group_by_length"}),
        ("course", COURSE),
        CHECKPOINTED,
        HEAD_ROW,
        ("course, padding-free instead of grouping", {**COURSE, "sampling": "random", "padding_free": True}),
    ],
    "qlora": [
        ("naive", {}),
        ("naive, seed 43", {"seed": 43}),
        ("no gradient checkpointing", {"gradient_checkpointing": False}),
        ("+ lora_dropout 0", {"gradient_checkpointing": False, "lora_dropout": 0.0}),
        PEFT_UPCAST,
        ("course", COURSE),
        CHECKPOINTED,
        HEAD_ROW,
    ],
}
GPU_ROWS = {  # fewer rows than on a CPU (a lent GPU gives minutes), plus what only a GPU runs or gains from
    "full": [
        ("naive", {}),
        ("no gradient checkpointing", {"gradient_checkpointing": False}),
        ("course", COURSE),
        CHECKPOINTED,
        ("course, 8-bit AdamW", {**COURSE, "optim": "adamw_bnb_8bit"}),
        LOW_MEMORY_PLAN,
    ],
    "lora": [
        ("naive", {}),
        ("naive, seed 43", {"seed": 43}),
        ("no gradient checkpointing", {"gradient_checkpointing": False}),
        ("+ lora_dropout 0", {"gradient_checkpointing": False, "lora_dropout": 0.0}),
        ("course", COURSE),
        CHECKPOINTED,
        ("course, padding-free instead of grouping", {**COURSE, "sampling": "random", "padding_free": True}),
        ("course, Liger kernels", {**COURSE, "liger": True}),
    ],
    "qlora": [
        ("naive", {}),
        ("naive, seed 43", {"seed": 43}),
        (PEFT_UPCAST[0], {**PEFT_UPCAST[1], "optim": "paged_adamw_8bit"}),  # the course's earlier recipe
        ("course", {**COURSE, "optim": "paged_adamw_8bit"}),  # notebook 3's optimizer on a GPU
        ("course, gradient checkpointing", {**CHECKPOINTED[1], "optim": "paged_adamw_8bit"}),
        ("unsloth settings", UNSLOTH),  # embedding and norms in bf16, float32 adapters, as Unsloth keeps them
        ("unsloth settings + Liger", {**UNSLOTH, "liger": True}),
    ],
}
SMOKE_ROWS = [("lora", "naive", {}), ("lora", "course", COURSE)]


def plan(rows: str, methods: list[str]) -> list[tuple[str, str, dict]]:
    """The rows to run: (method, row name, knobs), knobs complete."""
    if rows == "smoke":
        return [(m, name, {**NAIVE, **knobs}) for m, name, knobs in SMOKE_ROWS]
    table = GPU_ROWS if rows == "gpu" else CPU_ROWS
    return [(method, name, {**NAIVE, **knobs}) for method in methods for name, knobs in table[method]]


def long_conversations(dataset, tokenizer, rows: int, max_length: int, seed: int):
    """Conversations of 1 to 24 support exchanges up to max_length tokens; the loss is on the last reply."""
    import random

    from helpers.masking import tokenize_with_mask

    rng = random.Random(seed)
    conversations = []
    while len(conversations) < rows:
        chosen = [dataset[i] for i in rng.sample(range(len(dataset)), rng.randint(1, 24))]
        conversation, history = None, []
        for example in chosen:
            candidate = {**example, "prompt": history + example["prompt"]}
            if conversation is not None and len(tokenize_with_mask(tokenizer, candidate)[0]) > max_length:
                break
            conversation, history = candidate, candidate["prompt"] + example["completion"]
        conversations.append(conversation)
    return dataset.from_list(conversations)


class CountingCollator:
    """Wrap a data collator and count the positions it hands to the model: real tokens and padding."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.real = 0
        self.computed = 0
        self.largest_batch = 0  # positions in the largest batch (what sizes the activations)
        self.most_loss_tokens = 0  # positions with a label in one batch (what sizes the logits TRL computes)

    def __call__(self, examples):
        batch = self.collator(examples)
        self.computed += batch["input_ids"].numel()
        self.largest_batch = max(self.largest_batch, batch["input_ids"].numel())
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        if "labels" in batch:
            self.most_loss_tokens = max(self.most_loss_tokens, int((batch["labels"] != -100).sum()))
        return batch


def run_row(method: str, knobs: dict, args: argparse.Namespace) -> dict:
    """Train one row in this process and measure it."""
    import torch
    from trl import SFTTrainer

    from helpers.chat import CHAT_TEMPLATE_KWARGS, load_tokenizer
    from helpers.data import batches_of_similar_length, check_lengths, load_support, to_conversational
    from helpers.evaluate import eval_loss
    from helpers.hardware import detect_hardware
    from helpers.memory import MemoryTracker
    from helpers.models import choose_model, resolve_profile
    from helpers.recipe import adapters_to_float32, load_model, sft_config
    from helpers.speed import ThroughputCallback

    hardware = detect_hardware()
    precision = hardware.precision
    profile = resolve_profile(args.profile)
    choice = choose_model(profile, None, os.environ.get("COURSE_CACHE_DIR"))
    tokenizer = load_tokenizer(choice.path)
    examples = args.steps * knobs["batch"] * knobs["accumulation"]
    sizes = (
        {"validation": args.eval_examples}
        if args.long
        else {"train": examples, "validation": args.eval_examples}
    )
    raw = load_support(sizes)
    dataset = to_conversational(raw, chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    train = dataset["train"]
    if args.long:
        # the same for every row
        train = long_conversations(train, tokenizer, examples, args.max_length, seed=42)
    longest = check_lengths(train, tokenizer, args.max_length)["max"]  # tokens in the longest example
    sampling = knobs["sampling"]
    if sampling == "similar_length":
        train, sampling = (
            batches_of_similar_length(train, tokenizer, knobs["batch"], knobs["seed"]),
            "sequential",
        )

    if knobs["labelled_head"]:  # this row's process only (each CPU row runs in its own)
        score_labelled_positions_only()
    device = 0 if hardware.device_type == "cuda" else "cpu"
    model = load_model(
        method,
        choice.path,
        precision.torch_dtype,
        device,
        knobs["seed"],
        lora_dropout=knobs["lora_dropout"],
        attention=knobs["attention"],
        upcast=knobs["upcast"],
        tokenizer=tokenizer,
    )
    if knobs["gradient_checkpointing"] and method != "full":
        model.enable_input_require_grads()  # checkpointed LoRA layers need a gradient path from the inputs
    training_args = sft_config(  # helpers/recipe.py: the course's settings, the row's knobs changed
        method, profile, hardware,
        output_dir=tempfile.mkdtemp(prefix="bench-"),
        batch=knobs["batch"],
        max_length=None if knobs["padding_free"] else args.max_length,  # lengths were checked above
        seed=knobs["seed"],
        gradient_accumulation_steps=knobs["accumulation"],
        gradient_checkpointing=knobs["gradient_checkpointing"],
        train_sampling_strategy=sampling,
        padding_free=knobs["padding_free"],
        optim=knobs["optim"],
        torch_compile=knobs["torch_compile"],
        use_liger_kernel=knobs["liger"],
        logging_steps=1,
        save_strategy="no",
        logging_nan_inf_filter=True,  # TRL's default, as the rows were measured
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    throughput = ThroughputCallback(warmup_steps=args.warmup)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[throughput],
    )
    # bf16 adapters only under bf16
    if method == "qlora" and (knobs["adapter_fp32"] or not training_args.bf16):
        adapters_to_float32(trainer.model)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    tracker = MemoryTracker(hardware.device_type)
    # every CUDA allocation and free from here, with the Python lines that asked for it
    if args.memory_snapshot:
        torch.cuda.memory._record_memory_history(
            context="alloc", stacks="python", max_entries=SNAPSHOT_ENTRIES
        )
    with tracker.phase("train"):
        try:
            output = trainer.train()
        finally:  # save_strategy="no": the trainer's folder holds nothing to keep
            shutil.rmtree(training_args.output_dir, ignore_errors=True)
    breakdown = None
    if args.memory_snapshot:
        breakdown = peak_breakdown(torch.cuda.memory._snapshot(), SNAPSHOT_ENTRIES)
        torch.cuda.memory._record_memory_history(enabled=None)
    peak = tracker.results["train"]
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    speed = throughput.summary()
    row = {
        "method": method,
        "knobs": knobs,
        "steps": trainer.state.global_step,
        "examples": len(train),
        "real_tokens": counter.real,
        "padding_share": 1 - counter.real / counter.computed,
        "tokens_per_second": speed["tokens_per_second"],
        "train_seconds": speed["train_seconds"],
        "peak_memory": {
            "measured": peak["measured"],
            "start_bytes": peak["start_bytes"],  # allocated (CUDA) or resident (CPU) when training began
            "peak_bytes": peak["peak_bytes"],
            **({"peak_reserved_bytes": peak["peak_reserved_bytes"]} if "peak_reserved_bytes" in peak else {}),
        },
        "longest_example": longest,
        "largest_batch_tokens": counter.largest_batch,
        "most_loss_tokens": counter.most_loss_tokens,
        "train_loss": output.training_loss,
        "last_losses": losses[-5:],
        "eval_loss": eval_loss(model, tokenizer, dataset["validation"])["eval_loss"],
        "gpu": torch.cuda.get_device_name(0) if hardware.device_type == "cuda" else None,
    }
    if breakdown is not None:
        row["peak_breakdown"] = breakdown
    return {**row, "estimate": row_estimate(row, precision.bf16) if profile != "tiny" else None}


SNAPSHOT_ENTRIES = 2_000_000  # allocation events kept by --memory-snapshot (a ring: older ones are dropped)


def allocation_site(frames: list[dict], depth: int = 2) -> str:
    """The innermost `depth` Python frames outside torch behind an allocation, as 'file:line function'."""
    outside = [f for f in frames if "/torch/" not in f["filename"]][:depth]
    if not outside:
        return "(no Python frame outside torch: autograd's backward, or torch itself)"
    return " < ".join(f"{import_path(f['filename'])}:{f['line']} {f['name']}" for f in outside)


def import_path(filename: str) -> str:
    """A source file's path from the sys.path folder it was imported from (no machine path in the results)."""
    for folder in sorted((p.rstrip("/") for p in sys.path if p), key=len, reverse=True):
        if filename.startswith(folder + "/"):
            return filename[len(folder) + 1 :]
    return filename.rsplit("site-packages/", 1)[-1]


def peak_breakdown(snapshot: dict, max_entries: int, top: int = 15) -> dict:
    """The allocations live at the peak of a CUDA memory snapshot's trace, summed by the code that made them.

    The trace starts when recording did (torch.cuda.memory._record_memory_history): what was allocated before
    (the weights) is not in it, so rise_bytes is how far the peak rose above that.
    """
    trace = [event for device in snapshot["device_traces"] for event in device]
    total, rise, peak_at = 0, 0, -1
    for i, event in enumerate(trace):
        total += {"alloc": event["size"], "free_completed": -event["size"]}.get(event["action"], 0)
        if total > rise:
            rise, peak_at = total, i
    live = {}
    for event in trace[: peak_at + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    sites: dict[str, list[int]] = {}
    for event in live.values():
        site = sites.setdefault(allocation_site(event.get("frames", [])), [0, 0])
        site[0] += event["size"]
        site[1] += 1
    ranked = sorted(sites.items(), key=lambda item: -item[1][0])
    return {
        "rise_bytes": rise,
        "events": len(trace),
        "truncated": len(trace) >= max_entries,  # the ring dropped the first events: the rise is not reliable
        "sites": [{"site": site, "bytes": size, "allocations": n} for site, (size, n) in ranked[:top]],
        "other_bytes": sum(size for _, (size, _) in ranked[top:]),
        "largest": [  # the single biggest allocations, with more of their stack
            {"bytes": event["size"], "site": allocation_site(event.get("frames", []), depth=5)}
            for event in sorted(live.values(), key=lambda event: -event["size"])[:5]
        ],
    }


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head score only the positions with a label on every device, as it does on CUDA."""
    import trl.trainer.utils

    trl.trainer.utils._use_triton = lambda device: True  # read only by add_fused_lm_head's "compact" choice


def row_estimate(row: dict, bf16: bool) -> dict[str, int]:
    """Notebook 1's estimate (weights, gradients, optimizer, activations) for a row's method and shapes."""
    from helpers.fit import method_estimate
    from helpers.shapes import LLAMA_3_2_1B

    knobs = row["knobs"]
    # TRL's LM head scores only the positions with a label on CUDA, all on a CPU
    on_cuda = row["gpu"] is not None
    return method_estimate(
        LLAMA_3_2_1B,
        "full, 8-bit" if row["method"] == "full" and "8bit" in knobs["optim"] else row["method"],
        seq_len=row["largest_batch_tokens"] // knobs["batch"],
        batch_size=knobs["batch"],
        bf16=bf16,
        gradient_checkpointing=knobs["gradient_checkpointing"],
        loss_tokens=row["most_loss_tokens"] if on_cuda else None,
        upcast=knobs.get("upcast", True),  # rows measured before these two knobs existed lack them
        adapter_fp32=knobs.get("adapter_fp32", False),
    )




def row_process(
    method: str, knobs: dict, args: argparse.Namespace, result_file: Path, log_file: Path
) -> None:
    """Run one row in this (forked) process, its output to log_file and its result to result_file."""
    with open(log_file, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        result = run_row(method, knobs, args)
    result_file.write_text(json.dumps(result))


def in_process_row(
    method: str, knobs: dict, args: argparse.Namespace, result_file: Path, log_file: Path
) -> int:
    """Run one row in this process (CUDA): 0 if it worked, 1 with the traceback in log_file if it failed."""
    import gc
    import traceback

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    try:
        result_file.write_text(json.dumps(run_row(method, knobs, args)))
        return 0
    except Exception:  # an out-of-memory or a missing package fails the row, not the benchmark
        log_file.write_text(traceback.format_exc())
        return 1
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def without_out(argv: list[str]) -> list[str]:
    """The command-line arguments less --out and its folder (a machine path: record the run, not where)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


def reestimate(out: Path) -> int:
    """Recompute the memory estimate of every measured row in the results file with the current estimator."""
    from helpers.results import write_json_atomic

    runs = json.loads(out.read_text())["runs"]
    for key, run in runs.items():
        rows = [row for row in run["rows"] if "error" not in row and run["profile"] != "tiny"]
        for row in rows:
            row["estimate"] = row_estimate(row, run["precision"] == "bf16")
        print(f"{key}: {len(rows)} estimates recomputed")
    write_json_atomic(out, {"runs": runs})
    return 0


METHOD_NAMES = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}
README_TABLE = re.compile(
    r"(<!-- benchmark table: (?P<run>[^>]+?) -->\n).*?(<!-- end of benchmark table -->)", re.S
)


def row_order(rows: list[dict]) -> list[str]:
    """The row names of all methods in one order that keeps each method's own order."""
    names: list[str] = []
    for method in dict.fromkeys(r["method"] for r in rows):
        at = -1
        for name in (r["row"] for r in rows if r["method"] == method):
            if name not in names:
                names.insert(at + 1, name)
            at = names.index(name)
    return names


def markdown_table(run: dict) -> str:
    """A run as a markdown table, a column per method; each cell real tokens/s (x naive) and peak memory."""
    from helpers.memory import format_bytes

    naive = {
        r["method"]: r["tokens_per_second"] for r in run["rows"] if r["row"] == "naive" and "error" not in r
    }
    cells = {}
    for r in run["rows"]:
        if "error" in r:
            cells[r["row"], r["method"]] = "skipped" if r["error"].startswith("skipped") else "failed"
        else:
            ratio = f" ({r['tokens_per_second'] / naive[r['method']]:.2f}x)" if r["method"] in naive else ""
            cells[r["row"], r["method"]] = (
                f"{r['tokens_per_second']:,.0f}{ratio}, {format_bytes(r['peak_memory']['peak_bytes'])}"
            )
    methods = list(dict.fromkeys(r["method"] for r in run["rows"]))
    lines = [
        "| row | " + " | ".join(METHOD_NAMES.get(m, m) for m in methods) + " |",
        "|---" * (len(methods) + 1) + "|",
        *(
            f"| {name} | " + " | ".join(cells.get((name, m), "") for m in methods) + " |"
            for name in row_order(run["rows"])
        ),
    ]
    measured = next(r["peak_memory"]["measured"] for r in run["rows"] if "error" not in r)
    memory = (
        "peak allocated (CUDA)"
        if measured.startswith("cuda")
        else "peak resident memory of the row's process"
    )
    lines.append(f"\nEach cell: real tokens/s after warm-up (x the method's naive row), {memory}.")
    if any(r["method"] == "qlora" and r["row"] == "course" and r["knobs"].get("upcast") for r in run["rows"]):
        lines[-1] += (
            " QLoRA's \"course\" row in this run kept PEFT's float32 embedding and norms "
            "(the recipe before it kept them in the compute dtype)."
        )
    return "\n".join(lines) + "\n"


def readme_tables(text: str, runs: dict) -> str:
    """The README with each benchmark table block printed again from the runs it names."""

    def table(match: re.Match) -> str:
        if match["run"] not in runs:
            raise SystemExit(
                f"README names the benchmark run {match['run']!r}, which the results file lacks: {list(runs)}"
            )
        return match[1] + markdown_table(runs[match["run"]]) + match[3]

    return README_TABLE.sub(table, text)


def allocator_setting() -> list[str]:
    """PYTORCH_CUDA_ALLOC_CONF=... when it is set: it changes the reserved memory CUDA rows measure."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    return [f"PYTORCH_CUDA_ALLOC_CONF={conf}"] if conf else []


def run_key(args: argparse.Namespace, hardware) -> str:
    """Where a run goes in the results file: its profile and device (a new run replaces the one there)."""
    where = hardware.name if hardware.device_type == "cuda" else "cpu"
    return f"{args.profile} on {where}" + (" (smoke)" if args.rows == "smoke" else "")


def write_run(
    args: argparse.Namespace,
    argv: list[str] | None,
    hardware,
    rows: list[dict],
    seconds: float,
    earlier: dict | None,
) -> dict:
    """Put this run's rows in the results file, replacing an earlier run of the same profile and device."""
    from helpers.install import package_versions
    from helpers.results import write_json_atomic

    run = {
        "profile": args.profile,
        "hardware": hardware.describe(),
        "precision": hardware.precision.name,
        "versions": package_versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "command": shlex.join(
            [
                *allocator_setting(),
                "python",
                "scripts/benchmark.py",
                *without_out(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "naive": NAIVE,
        "course": COURSE,
        "rows": rows,
        "seconds": seconds,
    }
    key = run_key(args, hardware)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else {}
    for row in rows:
        row.setdefault("command", run["command"])  # which run measured each row (--merge keeps earlier rows)
    if earlier:  # --merge: keep the earlier run's rows that this run did not measure again
        done = {(row["method"], row["row"]) for row in rows if "error" not in row}
        kept = [{"command": earlier["command"], **row} for row in earlier["rows"]]
        order = {(m, name): i for i, (m, name, _) in enumerate(plan(args.rows, ["full", "lora", "qlora"]))}
        merged = [row for row in kept if (row["method"], row["row"]) not in done] + rows
        run["rows"] = sorted(merged, key=lambda row: order.get((row["method"], row["row"]), len(order)))
        run["command"] = f"{earlier['command']}; then {run['command']}"
    runs[key] = run
    write_json_atomic(args.out, {"runs": runs})
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="tiny", help="tiny, llama-3.2-1b-random or hub")
    parser.add_argument("--methods", default="full,lora,qlora")
    parser.add_argument(
        "--rows", choices=["cpu", "gpu", "smoke"], default="cpu", help="gpu: fewer rows, 8-bit AdamW, Liger"
    )
    parser.add_argument("--budget-s", type=float, default=None, help="start no row after this many seconds")
    parser.add_argument(
        "--smoke", action="store_true", help="two LoRA rows, a few steps (same as --rows smoke --steps 4)"
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of tokens per second")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--long", action="store_true", help="chain conversations up to --max-length tokens")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--only", default=None, help="these rows only: 'method:row name;...' (e.g. 'lora:course')"
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the earlier run's other rows (each row names its command)"
    )
    parser.add_argument(
        "--reestimate",
        action="store_true",
        help="recompute the stored rows' memory estimates (after the estimator changed)",
    )
    parser.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="CUDA: record every allocation while training; each row gets peak_breakdown "
        "(what was live at its peak, by line of code). "
        "Recording slows training: write these rows to their own --out",
    )
    parser.add_argument(
        "--readme", action="store_true", help="print README's benchmark tables again from --out"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmark.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.steps, args.warmup, args.eval_examples = "smoke", 4, 1, 8

    if args.reestimate:
        return reestimate(args.out)
    if args.readme:
        readme = ROOT / "README.md"
        readme.write_text(
            readme_tables(readme.read_text(encoding="utf-8"), json.loads(args.out.read_text())["runs"])
        )
        return 0

    import torch

    from helpers.hardware import detect_hardware

    rows = plan(args.rows, args.methods.split(","))
    if args.only:
        wanted = [tuple(item.split(":", 1)) for item in args.only.split(";")]
        unknown = [w for w in wanted if w not in {(m, n) for m, n, _ in rows}]
        if unknown:
            parser.error(f"--only names rows that --rows {args.rows} does not have: {unknown}")
        rows = [next(r for r in rows if (r[0], r[1]) == w) for w in wanted]  # in the order given
    # On a CPU each row runs in a process forked from this one, so that its peak RSS is its own, and it starts
    # with the libraries imported (a fresh process takes 12 s here). On CUDA the rows share this process: the
    # allocator's peak counters are reset for each row, and its cache emptied.
    cuda = torch.cuda.is_available()
    if args.memory_snapshot and not cuda:
        parser.error("--memory-snapshot records CUDA allocations: run it on a machine with a CUDA GPU.")
    hardware = detect_hardware()
    print(
        f"{len(rows)} rows, {args.steps} steps each, profile {args.profile}, on {hardware.describe()}",
        flush=True,
    )
    import peft  # noqa: F401  imported before forking (peft alone takes 10 s to import here)
    import trl  # noqa: F401

    import helpers.recipe  # noqa: F401

    earlier = None
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text())["runs"].get(run_key(args, hardware))
    results, started = [], time.perf_counter()
    if cuda and rows:
        # The first training in a process pays for CUDA's lazy start (kernels loaded, cuBLAS handles,
        # bitsandbytes' library): measured on the H200, a first QLoRA row ran at 11,905 tokens/s and the same
        # row later at 18,480. Three thrown-away steps were not enough: after them the first row (QLoRA naive)
        # still measured 12,083 tokens/s, and 16,712 when run again later (--only ... --merge). Each new batch
        # shape costs the allocator and the kernels' heuristics their first call, so the whole first row now
        # runs once, unmeasured, before the rows.
        method, _, knobs = rows[0]
        warm = argparse.Namespace(**{**vars(args), "warmup": 1, "eval_examples": 8, "memory_snapshot": False})
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            failed = in_process_row(method, knobs, warm, scratch / "warm.json", scratch / "warm.log")
        print(
            f"warm-up: {args.steps} steps of {method} {rows[0][1]} {'failed' if failed else 'done'} "
            f"(not measured), {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as scratch:
        for i, (method, name, knobs) in enumerate(rows, 1):
            result_file, log_file = Path(scratch) / f"row{i}.json", Path(scratch) / f"row{i}.log"
            row_start = time.perf_counter()
            if args.budget_s is not None and row_start - started > args.budget_s:
                print(
                    f"[{i}/{len(rows)}] {method:<5} {name}: skipped (--budget-s {args.budget_s:.0f} spent)",
                    flush=True,
                )
                results.append(
                    {"method": method, "row": name, "knobs": knobs, "error": "skipped: time budget spent"}
                )
                continue
            if cuda:  # one process; the allocator's peaks are reset for each row
                exitcode = in_process_row(method, knobs, args, result_file, log_file)
            else:
                process = multiprocessing.get_context("fork").Process(
                    target=row_process, args=(method, knobs, args, result_file, log_file)
                )
                process.start()
                process.join()
                exitcode = process.exitcode
            if exitcode or not result_file.exists():
                tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-15:])
                print(f"[{i}/{len(rows)}] {method:<5} {name}: FAILED\n{tail}", flush=True)
                results.append({"method": method, "row": name, "knobs": knobs, "error": tail[-2000:]})
                continue
            row = {"row": name, **json.loads(result_file.read_text())}
            results.append(row)
            # a run cut short keeps its rows
            write_run(args, argv, hardware, results, time.perf_counter() - started, earlier)
            print(
                f"[{i}/{len(rows)}] {method:<5} {name:<42} {row['tokens_per_second']:8.0f} tok/s  padding "
                f"{row['padding_share']:5.1%}  peak {row['peak_memory']['peak_bytes'] / 2**20:7.0f} MiB  "
                f"eval loss {row['eval_loss']:.3f}  ({time.perf_counter() - row_start:.0f} s)",
                flush=True,
            )
    run = write_run(args, argv, hardware, results, time.perf_counter() - started, earlier)
    print(f"{len(results)} rows in {run['seconds']:.0f} s -> {args.out}", flush=True)
    code = 1 if any("error" in row for row in results) else 0
    if cuda and argv is None:
        # On the H200 the interpreter then hung at exit (a thread left behind by one of the GPU rows'
        # libraries) until `timeout` killed it. Everything is written by now, so leave without waiting for it.
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
