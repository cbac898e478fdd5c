"""The notebooks' recipe as a script: full fine-tuning, LoRA or QLoRA, on a CPU, one GPU or several.

    # one GPU (or the CPU)
    python scripts/train.py --method lora
    # two GPUs: data parallel (DDP)
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --method lora
    # several GPUs: FSDP2 shards
    accelerate launch --config_file configs/fsdp.yaml scripts/train.py --method full
    # one CPU process
    accelerate launch --cpu --num_processes 1 scripts/train.py --method qlora --profile tiny

Without a GPU, `--multi_gpu --num_processes 2` runs two CPU processes, data parallel over gloo (the tests
compare its losses with one process's); `--num_processes 2` without `--multi_gpu` or a config file starts one
process only.

Same data, model loading, LoraConfig / BitsAndBytesConfig and SFTConfig settings as notebooks 1 to 3, from
helpers/recipe.py (tests/test_train_script.py checks them against the notebooks). The global batch
(--global-batch, default 8 examples per optimizer step) is split across the processes, so one GPU and four
train the same recipe on the same examples in each step.
Checkpoints go to <output-dir>/checkpoints (an interrupted run resumes from the newest complete one); the
trained model or adapter and the tokenizer go to <output-dir>/final, written by the first process only, whole
or not at all. Profiles and environment variables as in the notebooks (COURSE_PROFILE, COURSE_MODEL_ID,
COURSE_PRECISION). Your own data, as the notebooks' DATA: --data my.jsonl (or .json, .csv, a hub dataset id;
--column-map for other column names).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from helpers.artifacts import atomic_dir, shown
from helpers.callbacks import CheckpointOnInterrupt, StopOnNonFiniteLoss, last_good_checkpoint
from helpers.chat import CHAT_TEMPLATE_KWARGS, load_tokenizer
from helpers.checks import check_report_to, check_special_tokens, check_trainable_dtypes
from helpers.data import batches_of_similar_length, check_lengths, load_dataset_any, to_conversational
from helpers.evaluate import eval_loss, reply_scores, score_line
from helpers.preflight import describe_run
from helpers.recipe import METHODS, adapters_to_float32, load_model, sft_config


def per_device_batch(global_batch: int, processes: int) -> int:
    """Examples per process and step: each optimizer step sees global_batch examples at any process count."""
    if global_batch % processes:
        raise ValueError(
            f"--global-batch {global_batch} does not split evenly over {processes} processes: "
            f"pass a multiple of {processes} (e.g. --global-batch "
            f"{processes * max(1, global_batch // processes)})."
        )
    return global_batch // processes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "auto"),
                        help="auto, hub, tiny or llama-3.2-1b-random (default: COURSE_PROFILE, else auto)")
    parser.add_argument("--model-id", default=os.environ.get("COURSE_MODEL_ID"),
                        help="the hub profile's chat model: a hub id or folder (default: COURSE_MODEL_ID)")
    parser.add_argument("--precision", default=os.environ.get("COURSE_PRECISION", "auto"),
                        help="auto, bf16, fp16 or fp32 (default: COURSE_PRECISION, else auto)")
    parser.add_argument(
        "--data", default="support", help="support, a .jsonl/.json/.csv file or a hub dataset id"
    )
    parser.add_argument(
        "--column-map",
        type=json.loads,
        default=None,
        help='your column names, e.g. \'{"prompt": "question", "completion": "answer"}\'',
    )
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument(
        "--test-examples", type=int, default=300, help="test replies scored after training (0: skip)"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--global-batch", type=int, default=8, help="examples per optimizer step, over all processes"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="default: the notebook's for the method"
    )
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (default: one epoch)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="default: script-<method> in outputs/ (COURSE_OUTPUT_DIR)",
    )
    parser.add_argument(
        "--sampling",
        choices=["similar_length", "group_by_length", "random"],
        default="similar_length",
        help="similar_length (the notebooks'), transformers' group_by_length (longest-first pools), "
        "or random batches",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, one more forward pass "
        "(TRL's default is on)",
    )
    parser.add_argument("--report-to", default="none", help="none, tensorboard, trackio or wandb")
    parser.add_argument(
        "--logging-steps", type=int, default=10, help="log the training loss every this many steps"
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # One process, or one per GPU under accelerate launch / torchrun. Without a GPU, cpu=True makes several
    # processes one data-parallel run over gloo, as SFTConfig's use_cpu below does for the Trainer; without it
    # this state saw a single process, and each process took the whole global batch.
    state = PartialState(cpu=not torch.cuda.is_available())
    check_report_to(args.report_to)
    batch = per_device_batch(args.global_batch, state.num_processes)
    with contextlib.redirect_stdout(sys.stdout if state.is_main_process else io.StringIO()):  # one banner
        run = describe_run(
            profile=args.profile,
            model_id=args.model_id,
            results_dir=None,
            output_dir=os.environ.get("COURSE_OUTPUT_DIR"),
            precision=args.precision,
            gpu_memory_gib=os.environ.get("COURSE_GPU_MEMORY_GIB"),
            cache_dir=os.environ.get("COURSE_CACHE_DIR"),
        )
    profile, choice, hardware, outputs = run.profile, run.choice, run.hardware, run.output_dir
    precision = hardware.precision
    output_dir = args.output_dir or outputs / f"script-{args.method}"
    if state.is_main_process:
        print(f"{args.method}: {state.num_processes} process(es) x {batch} examples per step")

    tokenizer = load_tokenizer(choice.path)
    device = (state.device.index or 0) if state.device.type == "cuda" else "cpu"  # this process's GPU
    model = load_model(
        args.method, choice.path, precision.torch_dtype, device, args.seed, tokenizer=tokenizer
    )
    # as the notebooks: the pad load_tokenizer chose or added
    model.config.pad_token_id = tokenizer.pad_token_id
    check_special_tokens(model, tokenizer)
    sizes = {"train": args.train_examples, "validation": args.eval_examples, "test": args.test_examples}
    # as the notebooks' DATA
    raw = load_dataset_any(args.data, args.column_map, {k: n for k, n in sizes.items() if n})
    dataset = to_conversational(raw, chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    check_lengths(dataset["train"], tokenizer, args.max_length)
    train_data = dataset["train"]
    if args.sampling == "similar_length":  # as the notebooks: batches of similar length, in random order
        train_data = batches_of_similar_length(train_data, tokenizer, args.global_batch, args.seed)

    training_args = sft_config(  # helpers/recipe.py: the notebooks' settings, these changed
        args.method, profile, hardware,
        output_dir=str(output_dir / "checkpoints"),
        batch=batch,
        max_length=args.max_length,
        seed=args.seed,
        learning_rate=args.learning_rate,  # None: the notebook's for the method
        max_steps=args.max_steps,
        # off unless asked: the notebooks' memory plan decides
        gradient_checkpointing=args.gradient_checkpointing,
        train_sampling_strategy="sequential" if args.sampling == "similar_length" else args.sampling,
        logging_steps=args.logging_steps,
        report_to=args.report_to,
        ddp_find_unused_parameters=False,  # every adapter takes part in every step
    )
    check_trainable_dtypes(model, training_args.fp16)  # float16 trainable weights would fail later, obscurely
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        processing_class=tokenizer,
        # Ctrl-C or SIGTERM: a checkpoint, then stop
        callbacks=[StopOnNonFiniteLoss(), CheckpointOnInterrupt()],
    )
    if args.method == "qlora":  # as notebook 3: float32 adapters, whatever SFTTrainer cast them to
        adapters_to_float32(trainer.model)

    checkpoint = last_good_checkpoint(training_args.output_dir, quiet=not state.is_main_process)
    trainer.train(resume_from_checkpoint=checkpoint)
    state.wait_for_everyone()
    # every process takes part: FSDP gathers its shards
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not state.is_main_process:  # the first process writes the model and evaluates it
        return
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    with atomic_dir(output_dir / "final") as folder:
        # the adapter alone for lora and qlora, the whole model for full
        model.save_pretrained(folder, state_dict=state_dict)
        tokenizer.save_pretrained(folder)
    # the trained weights stay sharded over the processes: evaluate the saved copy
    if trainer.is_fsdp_enabled:
        model = AutoModelForCausalLM.from_pretrained(output_dir / "final", dtype=precision.torch_dtype).to(
            state.device
        )
    loss = eval_loss(model, tokenizer, dataset["validation"])
    print(f"eval loss {loss['eval_loss']:.3f} on {len(dataset['validation'])} validation examples")
    if args.test_examples:
        scores, _ = reply_scores(model, tokenizer, dataset["test"])  # task accuracy, or chrF on other data
        print(score_line(scores))
    print(f"saved {shown(output_dir / 'final')}")


if __name__ == "__main__":
    main()
