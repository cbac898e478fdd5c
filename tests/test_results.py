"""Tests for helpers/results.py (results files) and helpers/speed.py (the throughput callback)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from helpers import speed
from helpers.artifacts import dir_size_bytes
from helpers.results import (
    RESULT_KEYS,
    load_results,
    notebook_fingerprint,
    save_results,
    save_run,
    write_json_atomic,
)
from helpers.speed import ThroughputCallback


def full_results() -> dict:
    """One value for every key save_results() needs."""
    return {
        "method": "lora",
        "profile": "tiny",
        "model_id": "tiny-llama",
        "device": "cpu (2 cores, 23.5 GiB RAM), fp32",
        "dtype": "fp32",
        "versions": {"torch": "2.13.0"},
        "total_params": 1000,
        "trainable_params": 10,
        "peak_memory": {"measured": "process RSS (psutil)", "peak_bytes": 123, "breakdown": {"weights": 100}},
        "train_tokens_per_second": 512.5,
        "train_seconds": 12.0,
        "eval_loss": 2.0,
        "perplexity": 7.39,
        "accuracy_before": 0.1,
        "accuracy_after": 0.5,
        "artifact_bytes": 4096,
        "loss_history": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}],
        "notebook_fingerprint": "0123456789abcdef",
    }


def test_write_json_atomic_creates_dirs_and_converts_common_types(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    returned = write_json_atomic(
        path,
        {
            "path": Path("x/y"),
            "dtype": torch.bfloat16,
            "n": np.int64(3),
            "f": np.float32(0.5),
            "t": torch.tensor(2),
        },
    )
    assert returned == path
    assert json.loads(path.read_text()) == {"path": "x/y", "dtype": "bfloat16", "n": 3, "f": 0.5, "t": 2}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"version": 1})
    before = path.read_bytes()
    with pytest.raises(
        TypeError, match="object value .* cannot be written as JSON.*unchanged|unchanged.*object"
    ):
        write_json_atomic(path, {"version": 2, "bad": object()})
    with pytest.raises(TypeError, match="unchanged"):
        write_json_atomic(path, {("tuple", "key"): 1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp files left


def test_write_json_atomic_cleans_up_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"version": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("helpers.results.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_save_and_load_results_round_trip(tmp_path):
    path = save_results(tmp_path / "results" / "lora.json", **full_results())
    loaded = load_results(path)
    assert set(loaded) == set(RESULT_KEYS)
    assert loaded["loss_history"][1] == {"step": 2, "loss": 2.5}
    assert loaded["created_at"].endswith("+00:00")


def test_save_results_lists_the_missing_keys(tmp_path):
    fields = full_results()
    del fields["eval_loss"], fields["artifact_bytes"]
    with pytest.raises(ValueError, match="missing eval_loss, artifact_bytes"):
        save_results(tmp_path / "x.json", **fields)
    assert not (tmp_path / "x.json").exists()


def run_objects(tmp_path: Path) -> dict:
    """What a training notebook passes to save_run(), with before and after told apart by their values."""
    from datasets import Dataset, DatasetDict

    def split(prefix: str, n: int) -> Dataset:
        return Dataset.from_dict({"id": [f"{prefix}{i}" for i in range(n)], "prompt": ["hi"] * n})

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"x" * 300)
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["x = 1"]}]}))
    scores = {"metric": "task accuracy", "category": 1.0, "order": 0.5, "product": 0.0}
    return {
        "method": "lora",
        "notebook": notebook,
        "profile": "tiny",
        "choice": SimpleNamespace(name="tiny-llama"),
        "hardware": SimpleNamespace(
            describe=lambda: "cpu (2 cores), bf16", precision=SimpleNamespace(name="bf16")
        ),
        "tracker": SimpleNamespace(results={"train": {"peak_bytes": 123}}),
        "speed": {"tokens_per_second": 512.5, "train_seconds": 12.0},
        "params": (10, 1000),
        "data": "support",
        "dataset": DatasetDict(train=split("t", 5), validation=split("v", 2), test=split("q", 3)),
        "training_args": SimpleNamespace(max_length=256, learning_rate=3e-3, seed=42),
        "loss_history": [{"step": 10, "loss": 2.5}],
        "artifact": tmp_path / "adapter",
        "losses": (
            {"eval_loss": 3.0, "perplexity": 20.0},
            {"eval_loss": 2.0, "perplexity": 7.4, "per_example": [1.5, 2.5]},
        ),
        "scores": (
            {**scores, "accuracy": 0.0, "n": 3, "per_reply": [0, 0, 0]},
            {**scores, "accuracy": 2 / 3, "n": 3, "per_reply": [1, 0, 1]},
        ),
        "general": ("general prose", {"loss": 4.0, "per_text": [4.0]}, {"loss": 4.5, "per_text": [4.5]}),
        "config": {"lora_r": 8},
    }


def test_save_run_records_each_object_under_its_key(tmp_path):
    objects = run_objects(tmp_path)
    plan = {"name": "no checkpointing", "batch": 5}
    path = save_run(tmp_path / "lora.json", **objects, memory_plan=plan, merge_comparison={"a": 1})
    saved = load_results(path)
    assert set(RESULT_KEYS) <= set(saved)
    assert (saved["method"], saved["model_id"], saved["device"], saved["dtype"]) == (
        "lora", "tiny-llama", "cpu (2 cores), bf16", "bf16"
    )
    assert (saved["trainable_params"], saved["total_params"]) == (10, 1000)
    assert (saved["eval_loss_before"], saved["eval_loss"], saved["perplexity"]) == (3.0, 2.0, 7.4)
    assert (saved["accuracy_before"], saved["accuracy_after"], saved["test_examples"]) == (0.0, 2 / 3, 3)
    assert saved["test_scores"] == {"q0": 1, "q1": 0, "q2": 1}
    assert saved["eval_losses"] == {"v0": 1.5, "v1": 2.5}
    assert saved["general_text_loss"] == {
        "source": "general prose",
        "before": 4.0,
        "after": 4.5,
        "per_text_before": [4.0],
        "per_text_after": [4.5],
    }
    assert (saved["train_tokens_per_second"], saved["train_seconds"]) == (512.5, 12.0)
    assert saved["peak_memory"] == {"train": {"peak_bytes": 123}} and saved["artifact_bytes"] == 300
    assert saved["notebook_fingerprint"] == notebook_fingerprint(objects["notebook"])
    assert saved["merge_comparison"] == {"a": 1}
    assert saved["config"] == {
        "data": "support", "lora_r": 8, "train_examples": 5, "max_length": 256, "learning_rate": 3e-3,
        "seed": 42, "memory_plan": plan,
    }
    assert list(saved["config"]) == [
        "data", "lora_r", "train_examples", "max_length", "learning_rate", "seed", "memory_plan"
    ], "the order the notebooks wrote before save_run existed"
    full = {**objects, "method": "full", "config": {"plan": {"name": "plain"}}}
    without_plan = load_results(save_run(tmp_path / "full.json", **full))
    assert "memory_plan" not in without_plan["config"] and "merge_comparison" not in without_plan


def test_load_results_explains_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run the notebook that produces qlora.json"):
        load_results(tmp_path / "qlora.json")
    (tmp_path / "full.json").write_text('{"method": "full", ')
    with pytest.raises(ValueError, match="not valid JSON.*Run the notebook"):
        load_results(tmp_path / "full.json")
    (tmp_path / "old.json").write_text('{"method": "full"}')
    with pytest.raises(ValueError, match="lacks profile"):
        load_results(tmp_path / "old.json")


def test_dir_size_bytes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert dir_size_bytes(tmp_path) == 123
    assert dir_size_bytes(tmp_path / "a.bin") == 100
    with pytest.raises(FileNotFoundError):
        dir_size_bytes(tmp_path / "missing")


# --- ThroughputCallback, driven by hand with a fake clock -------------------------------------------


class FakeClock:
    """Stands in for the time module inside helpers.speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


COUNTING_ARGS = SimpleNamespace(include_num_input_tokens_seen="non_padding")


def run_steps(callback, clock, steps, args=COUNTING_ARGS, end_time=None):
    """steps: list of (time at step end, tokens seen so far)."""
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, (now, tokens) in enumerate(steps, start=1):
        clock.now = now
        state.global_step = step
        state.num_input_tokens_seen = tokens
        callback.on_step_end(args, state, control)
    clock.now = end_time if end_time is not None else clock.now
    callback.on_train_end(args, state, control)


def test_throughput_leaves_out_warmup_steps(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed, "time", clock)
    callback = ThroughputCallback(warmup_steps=2)
    # Two slow warm-up steps of 100 tokens, then three steps of 100 tokens in 1 s each.
    run_steps(
        callback, clock, [(10.0, 100), (15.0, 200), (16.0, 300), (17.0, 400), (18.0, 500)], end_time=20.0
    )
    summary = callback.summary()
    assert summary == {
        "tokens_per_second": 100.0,
        "train_seconds": 20.0,
        "measured_steps": 3,
        "tokens_measured": 300,
    }


def test_throughput_without_warmup_starts_at_train_begin(monkeypatch):
    clock = FakeClock()
    clock.now = 5.0
    monkeypatch.setattr(speed, "time", clock)
    callback = ThroughputCallback(warmup_steps=0)
    run_steps(callback, clock, [(7.0, 50), (9.0, 150)])
    summary = callback.summary()
    assert summary["tokens_per_second"] == 150 / 4
    assert summary["measured_steps"] == 2
    assert summary["train_seconds"] == 4.0


def test_throughput_of_a_short_run_keeps_its_second_half(monkeypatch):
    """A COURSE_SMOKE run of 4 steps with warmup_steps=5 still measures its last 2 steps."""
    clock = FakeClock()
    monkeypatch.setattr(speed, "time", clock)
    callback = ThroughputCallback(warmup_steps=5)
    state, control = TrainerState(max_steps=4), TrainerControl()
    callback.on_train_begin(COUNTING_ARGS, state, control)
    for step, (now, tokens) in enumerate([(5.0, 100), (6.0, 200), (7.0, 300), (9.0, 500)], start=1):
        clock.now, state.global_step, state.num_input_tokens_seen = now, step, tokens
        callback.on_step_end(COUNTING_ARGS, state, control)
    callback.on_train_end(COUNTING_ARGS, state, control)
    summary = callback.summary()
    assert summary["measured_steps"] == 2 and summary["tokens_measured"] == 300
    assert summary["tokens_per_second"] == 100.0


def test_throughput_with_too_few_steps_says_why(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed, "time", clock)
    callback = ThroughputCallback(warmup_steps=2)
    run_steps(callback, clock, [(1.0, 10), (2.0, 20)])
    summary = callback.summary()
    assert summary["tokens_per_second"] is None
    assert summary["measured_steps"] == 0
    assert "only 2 optimizer step(s) ran" in summary["reason"]
    assert summary["train_seconds"] == 2.0
    assert "has not started" in ThroughputCallback().summary()["reason"]


def test_throughput_raises_when_tokens_are_not_counted(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed, "time", clock)
    with pytest.raises(ValueError, match='include_num_input_tokens_seen="non_padding"'):
        run_steps(ThroughputCallback(), clock, [(1.0, 0), (2.0, 0)])
    not_counting = SimpleNamespace(include_num_input_tokens_seen="no")
    with pytest.raises(ValueError, match='include_num_input_tokens_seen="non_padding"'):
        run_steps(ThroughputCallback(), clock, [(1.0, 10)], args=not_counting)


def test_throughput_refuses_counting_padding_tokens(tmp_path):
    # True is turned into "all" by TrainingArguments, which counts padding too.
    args = TrainingArguments(output_dir=str(tmp_path), include_num_input_tokens_seen=True, report_to="none")
    assert args.include_num_input_tokens_seen == "all"
    with pytest.raises(ValueError, match="'all' would count padding"):
        ThroughputCallback().on_train_begin(args, TrainerState(), TrainerControl())


def test_notebook_fingerprint_follows_code_not_outputs(tmp_path):
    from helpers.results import notebook_fingerprint

    def write(code: str, output: str) -> Path:
        cell = {
            "cell_type": "code",
            "source": [code],
            "outputs": [{"output_type": "stream", "text": [output]}],
        }
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps({"cells": [cell, {"cell_type": "markdown", "source": ["# t"]}]}))
        return path

    first = notebook_fingerprint(write("x = 1", "a"))
    assert notebook_fingerprint(write("x = 1", "b")) == first, "outputs do not change the fingerprint"
    assert notebook_fingerprint(write("x = 2", "a")) != first, "code does"
    assert len(first) == 16
