"""Training throughput: non-padding tokens per second, measured by a Trainer callback."""

from __future__ import annotations

import time

from transformers import TrainerCallback

_TOKENS_NOT_COUNTED = (
    "The Trainer is not counting input tokens (state.num_input_tokens_seen stays 0), so ThroughputCallback "
    'cannot measure tokens per second. Fix: set include_num_input_tokens_seen="non_padding" in your '
    "SFTConfig / TrainingArguments."
)


class ThroughputCallback(TrainerCallback):
    """Measure non-padding tokens per second over the optimizer steps after the first `warmup_steps`.

    Needs include_num_input_tokens_seen="non_padding" in the SFTConfig / TrainingArguments: the Trainer
    then adds attention_mask.sum() of every micro-batch to state.num_input_tokens_seen before
    on_step_end. The first steps are slower (memory allocation, kernel selection), so they are left out.
    The measured window runs from the end of step `warmup_steps` to the end of the last step, so
    logging (and any evaluation or checkpoint saving during training) inside that window is included.
    train_seconds is the wall time of the whole trainer.train() call, warm-up included.
    A run of fewer than 2 * warmup_steps optimizer steps (e.g. COURSE_SMOKE) leaves out its first half only.
    """

    def __init__(self, warmup_steps: int = 2) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}.")
        self.warmup_steps = warmup_steps
        self.warmup_used = warmup_steps  # lowered at on_train_begin for a run shorter than 2 * warmup_steps
        self.train_start = None  # time.perf_counter() at on_train_begin
        self.train_end = None  # time.perf_counter() at on_train_end
        self.steps_done = 0  # optimizer steps seen in this train() call
        self.window_start = None  # (time, tokens) when the measured window opened
        self.window_end = None  # (time, tokens, steps_done) at the last step end after warm-up

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the clock; fail early if the Trainer will not count tokens."""
        if getattr(args, "include_num_input_tokens_seen", "no") != "non_padding":
            seen = getattr(args, "include_num_input_tokens_seen", None)
            raise ValueError(_TOKENS_NOT_COUNTED + f" (it is {seen!r}; 'all' would count padding too.)")
        self.train_start = time.perf_counter()
        self.train_end = None
        self.steps_done = 0
        self.window_end = None
        if getattr(state, "max_steps", 0) > 0:  # a short run: keep at least half of its steps
            self.warmup_used = min(self.warmup_steps, state.max_steps // 2)
        self.window_start = (
            (self.train_start, state.num_input_tokens_seen) if self.warmup_used == 0 else None
        )

    def on_step_end(self, args, state, control, **kwargs):
        """After each optimizer step: open the window after warm-up, then move its end forward."""
        now = time.perf_counter()
        self.steps_done += 1
        if state.num_input_tokens_seen == 0:
            raise ValueError(_TOKENS_NOT_COUNTED)
        if self.steps_done == self.warmup_used:
            self.window_start = (now, state.num_input_tokens_seen)
        elif self.steps_done > self.warmup_used:
            self.window_end = (now, state.num_input_tokens_seen, self.steps_done)

    def on_train_end(self, args, state, control, **kwargs):
        """Stop the clock for the total training time."""
        self.train_end = time.perf_counter()

    def summary(self) -> dict:
        """tokens_per_second, train_seconds, measured_steps, tokens_measured (+ reason if not measurable)."""
        train_seconds = None
        if self.train_start is not None and self.train_end is not None:
            train_seconds = self.train_end - self.train_start
        result = {
            "tokens_per_second": None,
            "train_seconds": train_seconds,
            "measured_steps": 0,
            "tokens_measured": 0,
        }
        if self.train_start is None:
            result["reason"] = "training has not started: pass this callback to the trainer and call train()."
            return result
        if self.window_start is None or self.window_end is None:
            result["reason"] = (
                f"only {self.steps_done} optimizer step(s) ran, and the first {self.warmup_used} are "
                f"warm-up: train for more than {self.warmup_used} steps (max_steps) or lower warmup_steps."
            )
            return result
        start_time, start_tokens = self.window_start
        end_time, end_tokens, end_step = self.window_end
        seconds = end_time - start_time
        result["measured_steps"] = end_step - self.warmup_used
        result["tokens_measured"] = end_tokens - start_tokens
        if seconds <= 0:
            result["reason"] = "the measured steps took no measurable time."
            return result
        result["tokens_per_second"] = result["tokens_measured"] / seconds
        return result
