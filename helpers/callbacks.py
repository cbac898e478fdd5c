"""Callbacks that guard a run: stop at a non-finite loss, Ctrl-C saves a checkpoint; finding a good one."""

from __future__ import annotations

import json
import math
import signal
import threading
from pathlib import Path

from safetensors import safe_open
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import sort_checkpoints

from helpers.artifacts import shown

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "adapter_model.bin",
)
_RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training at the first logged loss (or grad norm, outside fp16) that is nan or inf, saying why."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            raise ValueError(
                "logging_nan_inf_filter=True (the default) replaces nan/inf losses with the average of "
                "earlier ones in the log, hiding a diverged run. Fix: pass logging_nan_inf_filter=False to "
                "SFTConfig / TrainingArguments."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        keys = ["loss"] if args.fp16 else ["loss", "grad_norm"]  # fp16 loss scaling overflows now and then
        for key in keys:
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                last = f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}" if (
                    self.last_finite
                ) else "no finite loss was logged before"
                checkpoint = last_good_checkpoint(args.output_dir, quiet=True)
                raise FloatingPointError(
                    f"Training stopped at step {state.global_step}: {key} is {value} ({last}). "
                    f"Likely causes: a learning rate too high ({args.learning_rate:g}: "
                    "try 10x lower, with warmup); float16 overflow (use bf16 on Ampere+ GPUs, "
                    "or fp16 mixed precision with float32 weights); examples whose answer was cut off "
                    "entirely (all labels -100: run check_lengths); a bad data row. "
                    + (
                        f"Last good checkpoint: {checkpoint}."
                        if checkpoint
                        else "No checkpoint was saved yet."
                    )
                )
        if logs.get("loss") is not None:
            self.last_finite = (state.global_step, logs["loss"])


def check_checkpoint_limit(args) -> None:
    """Refuse saving checkpoints without save_total_limit (a full fine-tuning checkpoint of 1B is ~15 GB)."""
    if (
        str(getattr(args.save_strategy, "value", args.save_strategy)) != "no"
        and args.save_total_limit is None
    ):
        raise ValueError(
            "save_total_limit is None: every checkpoint is kept until the disk fills (a full fine-tuning "
            "checkpoint of Llama 3.2 1B with its optimizer states is ~15 GB). Fix: save_total_limit=2."
        )


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (missing or unreadable files), or None when complete."""
    folder = Path(folder)
    missing = [name for name in _RESUME_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        missing.append("model weights")
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON"
    for weights in folder.glob("*.safetensors"):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as err:  # a file cut off by a crash during saving
            return f"{weights.name} is unreadable ({err})"
    return None


def last_good_checkpoint(output_dir: str | Path, quiet: bool = False) -> str | None:
    """The newest complete checkpoint-N in output_dir (skipping broken ones), or None to start fresh."""
    say = (lambda *a: None) if quiet else print
    if not Path(output_dir).is_dir():
        say(f"No checkpoints yet ({shown(output_dir)} does not exist): training starts from the beginning.")
        return None
    for folder in reversed(sort_checkpoints(str(output_dir))):
        problem = checkpoint_problem(folder)
        if problem is None:
            state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
            if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
                say(f"The last run in {shown(output_dir)} finished ({Path(folder).name} is its last step): "
                    "training starts from the beginning.")
                return None
            say(f"Resuming from {shown(folder)}.")
            return folder
        say(f"Skipping {shown(folder)}: {problem} (interrupted while saving?).")
    say(f"No complete checkpoint in {shown(output_dir)}: training starts from the beginning.")
    return None


def _training(frame) -> bool:
    """Whether a frame runs inside Trainer.train() (the interrupted code, seen from a signal handler)."""
    while frame is not None:
        if frame.f_code is Trainer.train.__code__:
            return True
        frame = frame.f_back
    return False


class CheckpointOnInterrupt(TrainerCallback):
    """On Ctrl-C, a kernel interrupt or SIGTERM: finish the step, save a checkpoint, stop, say how to resume.

    A second press stops at once, naming the last complete checkpoint.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self.step: int | None = None
        self.output_dir = ""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not _training(frame):  # training already ended with an error: an interrupt is an interrupt again
            self.uninstall()
            raise KeyboardInterrupt
        if self.interrupted:
            self.uninstall()
            last = last_good_checkpoint(self.output_dir, quiet=True)
            raise KeyboardInterrupt(
                "Training was stopped mid-step. "
                + (
                    f"Re-run this cell (or the same command) to resume from {shown(last)}."
                    if last
                    else "No checkpoint was saved yet."
                )
            )
        self.interrupted = True
        print(
            "Interrupt received: finishing this step and saving a checkpoint. "
            "Interrupt again to stop at once."
        )

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (main thread only; elsewhere nothing changes)."""
        self.uninstall()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        check_checkpoint_limit(args)
        self.interrupted, self.step, self.output_dir = False, None, args.output_dir
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            self.step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
        if self.interrupted:
            raise KeyboardInterrupt(
                f"Training interrupted at step {self.step}; checkpoint saved in "
                f"{shown(args.output_dir)}/checkpoint-{self.step}. Re-run this cell (or the same command) "
                "to resume from it (later cells would otherwise use a half-trained model)."
            )
