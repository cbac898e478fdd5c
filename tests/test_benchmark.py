"""The benchmark (scripts/benchmark.py) and the batching it measures: similar-length, padding-free."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import load_script
from transformers import AutoModelForCausalLM

from helpers import ROOT
from helpers.chat import CHAT_TEMPLATE_KWARGS, load_tokenizer
from helpers.compare import benchmark_findings, benchmark_rows
from helpers.data import (
    batches_of_similar_length,
    load_support,
    padding_share,
    to_conversational,
    token_lengths,
)
from helpers.masking import tokenize_with_mask

TINY = str(ROOT / "models" / "tiny-llama-support")
benchmark = load_script("benchmark")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def train_split():
    return to_conversational(load_support({"train": 400}), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)["train"]


def test_similar_length_batches_keep_the_examples_and_cut_padding(train_split, tokenizer):
    grouped = batches_of_similar_length(train_split, tokenizer, batch_size=8, seed=42)
    assert sorted(grouped["id"]) == sorted(train_split["id"])  # the same examples, each once
    before = padding_share(train_split, tokenizer, 8)
    after = padding_share(grouped, tokenizer, 8)
    assert before > 0.10 and after < 0.05, (before, after)
    # the batches come in random order, not longest-first as in transformers' group_by_length
    longest = [max(token_lengths(grouped.select(range(i, i + 8)), tokenizer)) for i in range(0, 400, 8)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    assert grouped["id"] == batches_of_similar_length(train_split, tokenizer, batch_size=8, seed=42)["id"]


def test_padding_free_batch_gives_each_example_the_loss_of_a_padded_batch(train_split, tokenizer):
    """Examples end to end with restarting position ids attend only within themselves (no cross-talk)."""
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation="sdpa").eval()
    examples = [tokenize_with_mask(tokenizer, train_split[i]) for i in range(4)]
    lengths = [len(ids) for ids, _ in examples]
    assert len(set(lengths)) > 1  # mixed lengths, or the test proves nothing
    longest, pad = max(lengths), tokenizer.pad_token_id
    padded = torch.tensor([ids + [pad] * (longest - len(ids)) for ids, _ in examples])
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    flat = torch.tensor([sum((ids for ids, _ in examples), [])])
    positions = torch.tensor([sum((list(range(n)) for n in lengths), [])])
    with torch.no_grad():
        padded_logits = model(input_ids=padded, attention_mask=mask).logits
        # use_cache=False as TRL's SFTTrainer passes in training:
        # with a cache, transformers does not look for packing
        flat_logits = model(input_ids=flat, position_ids=positions, use_cache=False).logits[0]
    start = 0
    for row, n in enumerate(lengths):
        torch.testing.assert_close(
            flat_logits[start : start + n], padded_logits[row, :n], atol=1e-4, rtol=1e-4
        )
        start += n
    # and without the position ids, later examples would see earlier ones: the check above can fail
    with torch.no_grad():
        leaky = model(input_ids=flat, use_cache=False).logits[0]
    assert not torch.allclose(
        leaky[lengths[0] : lengths[0] + lengths[1]], padded_logits[1, : lengths[1]], atol=1e-3
    )


def test_benchmark_smoke_writes_rows_and_keeps_other_runs(tmp_path):
    out = tmp_path / "benchmark.json"
    out.write_text(json.dumps({"runs": {"llama-3.2-1b-random on Some GPU": {"rows": []}}}))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not list(scratch.glob("bench-*")), "a row left its trainer folder behind"
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"llama-3.2-1b-random on Some GPU", "tiny on cpu (smoke)"}
    run = runs["tiny on cpu (smoke)"]
    naive, course = run["rows"]
    assert (naive["row"], course["row"]) == ("naive", "course")
    assert naive["knobs"]["gradient_checkpointing"] and not course["knobs"]["gradient_checkpointing"]
    assert naive["real_tokens"] == course["real_tokens"]  # the same examples, whatever the batching
    assert course["padding_share"] < naive["padding_share"]
    for row in (naive, course):
        assert row["tokens_per_second"] > 0 and row["peak_memory"]["peak_bytes"] > 0
        assert 0 < row["eval_loss"] < 20
    table = benchmark_rows(run)
    assert [r["x naive"] for r in table][0] == "1.00x"
    assert benchmark_findings(run)[0].startswith("lora: course ")
    assert "x naive's real tokens/s, peak memory " in benchmark_findings(run)[0]  # each speed with its memory


def test_benchmark_table_reports_a_failed_row():
    ok = {
        "method": "lora",
        "row": "naive",
        "tokens_per_second": 100.0,
        "padding_share": 0.1,
        "train_loss": 1.0,
        "eval_loss": 1.0,
        "peak_memory": {"peak_bytes": 2**20},
    }
    run = {
        "rows": [
            ok,
            {"method": "lora", "row": "course", "knobs": {}, "error": "Traceback\nOutOfMemoryError: CUDA"},
        ]
    }
    rows = benchmark_rows(run)
    assert rows[1]["tokens/s"] == "failed: OutOfMemoryError: CUDA"
    assert benchmark_findings(run) == []  # no course row measured: no claim
    # nothing to show on a CPU: no column
    assert "reserved (CUDA)" not in rows[0] and "estimate" not in rows[0]
    on_cuda = {**ok, "peak_memory": {"peak_bytes": 2**30, "peak_reserved_bytes": 2**31}}
    assert benchmark_rows({"rows": [on_cuda]})[0]["reserved (CUDA)"] == "2.00 GiB"


def test_the_readme_tables_are_the_committed_benchmark_runs():
    """README's benchmark tables are printed from results/benchmark.json (scripts/benchmark.py --readme)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    runs = json.loads((ROOT / "results" / "benchmark.json").read_text())["runs"]
    named = [m["run"] for m in benchmark.README_TABLE.finditer(readme)]
    assert named == ["tiny on cpu", "llama-3.2-1b-random on NVIDIA H200"]
    assert benchmark.readme_tables(readme, runs) == readme, "run python scripts/benchmark.py --readme"


def test_a_readme_table_gives_each_speed_its_memory_and_names_a_missing_run():
    run = {
        "rows": [
            {
                "method": "lora",
                "row": "naive",
                "knobs": {},
                "tokens_per_second": 1000.0,
                "peak_memory": {"measured": "cuda max_memory_allocated", "peak_bytes": 3 * 2**30},
            },
            {
                "method": "lora",
                "row": "course",
                "knobs": {},
                "tokens_per_second": 1500.0,
                "peak_memory": {"measured": "cuda max_memory_allocated", "peak_bytes": 6 * 2**30},
            },
            {
                "method": "qlora",
                "row": "course",
                "knobs": {"upcast": True},
                "error": "Traceback ...\nOutOfMemoryError",
            },
        ]
    }
    table = benchmark.markdown_table(run)
    assert "| course | 1,500 (1.50x), 6.00 GiB | failed |" in table
    assert "peak allocated (CUDA)" in table and "kept PEFT's float32 embedding and norms" in table
    block = "<!-- benchmark table: gone -->\nold\n<!-- end of benchmark table -->"
    with pytest.raises(SystemExit, match="'gone'"):
        benchmark.readme_tables(block, {"here": run})
    assert "old" not in benchmark.readme_tables(block.replace("gone", "here"), {"here": run})


def test_row_order_keeps_each_methods_order():
    rows = [
        {"method": m, "row": r}
        for m, r in [("full", "a"), ("full", "c"), ("lora", "a"), ("lora", "b"), ("lora", "c")]
    ]
    assert benchmark.row_order(rows) == ["a", "b", "c"]


def test_scoring_only_labelled_positions_gives_the_same_loss_and_gradients(
    train_split, tokenizer, monkeypatch
):
    """The "LM head on labelled positions only" row computes what TRL's CPU path does, with less work."""
    import trl.trainer.utils

    examples = [tokenize_with_mask(tokenizer, train_split[i]) for i in range(4)]
    longest = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([i + [tokenizer.pad_token_id] * (longest - len(i)) for i, _ in examples])
    labels = torch.tensor([lab + [-100] * (longest - len(lab)) for _, lab in examples])
    assert (labels == -100).float().mean() > 0.3  # prompts and padding: what the patched head leaves out

    def loss_and_grad():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
        trl.trainer.utils.add_fused_lm_head(model)
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels,
                     fused_lm_head=True).loss
        loss.backward()
        return loss.item(), model.get_output_embeddings().weight.grad.clone()

    projected = []  # how many positions each forward sends through the LM head
    head = trl.trainer.utils._ChunkedLogProbFunction

    class CountingHead:
        @staticmethod
        def apply(hidden_states, *rest):
            projected.append(hidden_states.shape[0])
            return head.apply(hidden_states, *rest)

    monkeypatch.setattr(trl.trainer.utils, "_ChunkedLogProbFunction", CountingHead)
    # restored after the test
    monkeypatch.setattr(trl.trainer.utils, "_use_triton", trl.trainer.utils._use_triton)
    every_position = loss_and_grad()
    benchmark.score_labelled_positions_only()
    labelled_only = loss_and_grad()
    assert projected == [4 * (longest - 1), int((labels[:, 1:] != -100).sum())]
    assert abs(every_position[0] - labelled_only[0]) < 1e-5
    assert torch.allclose(every_position[1], labelled_only[1], atol=1e-6)


def test_memory_snapshot_breakdown_sums_what_is_live_at_the_peak():
    def frame(path, line, name):
        return {"filename": path, "line": line, "name": name}

    linear = frame("/x/site-packages/torch/nn/modules/linear.py", 125, "forward")
    llama = frame("/x/site-packages/transformers/models/llama/modeling_llama.py", 200, "forward")
    lora = frame("/x/site-packages/peft/tuners/lora/bnb.py", 500, "forward")
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": [linear, llama]},
        {"action": "alloc", "addr": 2, "size": 50, "frames": [linear]},  # torch only: autograd's backward
        {"action": "free_requested", "addr": 1, "size": 100, "frames": []},
        {"action": "free_completed", "addr": 1, "size": 100, "frames": []},
        {"action": "alloc", "addr": 3, "size": 200, "frames": [linear, lora, llama]},
        {"action": "alloc", "addr": 4, "size": 30, "frames": [lora, llama]},  # the peak: 50 + 200 + 30
        {"action": "free_completed", "addr": 3, "size": 200, "frames": []},
        {"action": "free_completed", "addr": 9, "size": 10, "frames": []},  # allocated before recording began
        {"action": "alloc", "addr": 5, "size": 60, "frames": [llama]},
    ]
    breakdown = benchmark.peak_breakdown({"device_traces": [trace], "segments": []}, max_entries=100, top=1)
    assert breakdown["rise_bytes"] == 280 and breakdown["events"] == 9 and not breakdown["truncated"]
    assert breakdown["sites"] == [
        {
            "site": "peft/tuners/lora/bnb.py:500 forward"
            " < transformers/models/llama/modeling_llama.py:200 forward",
            "bytes": 230,
            "allocations": 2,
        }
    ]
    assert breakdown["other_bytes"] == 50  # the allocation with no frame outside torch
    assert [entry["bytes"] for entry in breakdown["largest"]] == [200, 50, 30]
    assert benchmark.allocation_site([linear]).startswith("(no Python frame outside torch")
    assert benchmark.import_path(str(ROOT / "helpers" / "data.py")) == "helpers/data.py"
    assert benchmark.peak_breakdown({"device_traces": [trace]}, max_entries=9)["truncated"]


def test_memory_snapshot_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--memory-snapshot", "--out", str(tmp_path / "b.json")])
    assert stop.value.code == 2 and "run it on a machine with a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_gpu_bench_script_names_rows_the_gpu_plan_has():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    runs = [line for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 2 and "--memory-snapshot" in runs[1] and "--merge" in runs[0]
    planned = {f"{method}:{name}" for method, name, _ in benchmark.plan("gpu", ["full", "lora", "qlora"])}
    for run in runs:
        words = shlex.split(run)
        only = words[words.index("--only") + 1]
        assert only.split(";") and set(only.split(";")) <= planned, only


def test_a_row_with_memory_snapshot_records_while_training_and_stops_after(monkeypatch):
    """The CUDA-only wiring of --memory-snapshot, with torch's recorder stood in for (no CUDA here)."""
    import argparse

    calls = []
    alloc = {"action": "alloc", "addr": 1, "size": 64, "frames": []}
    monkeypatch.setattr(
        torch.cuda.memory, "_record_memory_history", lambda *a, **k: calls.append(("record", k))
    )
    monkeypatch.setattr(
        torch.cuda.memory, "_snapshot", lambda: calls.append(("snapshot",)) or {"device_traces": [[alloc]]}
    )
    args = argparse.Namespace(profile="tiny", steps=2, warmup=1, eval_examples=8, long=False, max_length=256,
                              memory_snapshot=True)
    row = benchmark.run_row("lora", {**benchmark.NAIVE, **benchmark.COURSE}, args)
    assert [c[0] for c in calls] == ["record", "snapshot", "record"]
    assert calls[0][1]["max_entries"] == benchmark.SNAPSHOT_ENTRIES and calls[2][1] == {"enabled": None}
    assert row["peak_breakdown"]["rise_bytes"] == 64 and row["peak_breakdown"]["sites"][0]["allocations"] == 1
    assert 0 < row["peak_memory"]["start_bytes"] <= row["peak_memory"]["peak_bytes"]
