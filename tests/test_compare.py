"""The comparison helpers: loading the three results files, the table, and the will-it-fit estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.compare import NOTEBOOK_OF, comparison_rows, format_rows, load_all
from helpers.fit import lora_trainable_params, method_estimate
from helpers.results import notebook_fingerprint, save_results
from helpers.shapes import LLAMA_2_7B, LLAMA_3_2_1B, LLAMA_SHAPES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def write_result(results_dir: Path, notebooks_dir: Path, method: str, **override) -> None:
    """A complete results file for one method, fingerprinted with the notebook in notebooks_dir."""
    fields = {
        "method": method,
        "profile": "tiny",
        "model_id": "tiny",
        "device": "cpu (2 cores)",
        "dtype": "fp32",
        "versions": {},
        "total_params": 1000,
        "trainable_params": 10 if method != "full" else 1000,
        "peak_memory": {
            "load": {"start_bytes": 100},
            "train": {
                "measured": "process RSS (psutil)",
                "peak_bytes": 5 * 2**20,
                "start_bytes": 2**20,
                "end_bytes": 2**20,
                "breakdown": {"weights": 4000, "gradients": 40, "optimizer_states": 80},
                "estimate": {
                    "weights": 4000,
                    "gradients": 40,
                    "optimizer_states": 80,
                    "activations": 7,
                    "total": 4127,
                },
            },
        },
        "train_tokens_per_second": 1500.0,
        "train_seconds": 100.0,
        "eval_loss": 1.25,
        "perplexity": 3.49,
        "accuracy_before": 0.0,
        "accuracy_after": 0.5,
        "artifact_bytes": 2**20,
        "loss_history": [],
        "notebook_fingerprint": notebook_fingerprint(notebooks_dir / NOTEBOOK_OF[method]),
    }
    save_results(results_dir / f"{method}.json", **{**fields, **override})


@pytest.fixture
def dirs(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in NOTEBOOK_OF.values():
        (notebooks / name).write_text(json.dumps({"cells": [{"cell_type": "code", "source": [name]}]}))
    return tmp_path / "results", notebooks


def test_complete_results_load_without_problems(dirs):
    results, notebooks = dirs
    for method in NOTEBOOK_OF:
        write_result(results, notebooks, method)
    found, problems = load_all(results, notebooks)
    assert list(found) == ["full", "lora", "qlora"] and problems == []


def test_missing_results_name_the_notebook_that_writes_them(dirs):
    results, notebooks = dirs
    write_result(results, notebooks, "lora")
    found, problems = load_all(results, notebooks)
    assert list(found) == ["lora"]
    assert "full: No results file" in problems[0] and "Run notebooks/01_full_finetuning.ipynb" in problems[0]
    assert "Run notebooks/03_qlora.ipynb (or `make course`)" in problems[1]


def test_results_older_than_their_notebook_are_called_stale(dirs):
    results, notebooks = dirs
    for method in NOTEBOOK_OF:
        write_result(results, notebooks, method)
    (notebooks / "02_lora.ipynb").write_text(
        json.dumps({"cells": [{"cell_type": "code", "source": ["changed"]}]})
    )
    _, problems = load_all(results, notebooks)
    assert len(problems) == 1
    assert problems[0].startswith(
        "lora: stale: notebooks/02_lora.ipynb has changed since lora.json was written"
    )


def test_mixed_profiles_and_hardware_are_reported(dirs):
    results, notebooks = dirs
    write_result(results, notebooks, "full")
    write_result(results, notebooks, "lora", profile="llama-3.2-1b", device="cuda NVIDIA L4")
    _, problems = load_all(results, notebooks)
    assert any(
        "different profiles (full: tiny; lora: llama-3.2-1b)" in p and "not comparable" in p for p in problems
    )
    assert any("different hardware" in p for p in problems)


def test_comparison_table_has_one_column_per_method(dirs):
    results, notebooks = dirs
    for method in NOTEBOOK_OF:
        write_result(results, notebooks, method)
    found, _ = load_all(results, notebooks)
    rows = comparison_rows(found)
    assert rows["accuracy before -> after"] == {m: "0.0% -> 50.0%" for m in NOTEBOOK_OF}
    cpu_peak = "peak memory, training (process: mostly Python and libraries)"
    assert rows[cpu_peak]["full"] == "5.00 MiB"
    assert rows["  activations (estimated)"]["lora"] == "7 B"
    order = list(rows)
    # the tensor breakdown first, the process peak after
    assert order.index("  weights") < order.index(cpu_peak)
    # an older results file without the test count: no interval is made up
    assert "  95% interval after" not in rows
    write_result(results, notebooks, "full", test_examples=300, accuracy_after=0.8)
    rows = comparison_rows(load_all(results, notebooks)[0])
    assert rows["  95% interval after"]["full"] == "75.1% to 84.1% (n=300)"
    text = format_rows(rows)
    assert text.splitlines()[0].split() == ["full", "lora", "qlora"]
    assert "train tokens/s" in text and "1,500" in text


def test_the_committed_results_compare_cleanly():
    """results/ holds the three files of one run of the committed notebooks: same profile, not stale."""
    found, problems = load_all(NOTEBOOKS.parent / "results", NOTEBOOKS)
    assert set(found) == set(NOTEBOOK_OF) and problems == []


def test_lora_counts_match_the_numbers_tutorials_quote():
    assert lora_trainable_params(LLAMA_2_7B, 8, ["q_proj", "v_proj"]) == 4_194_304
    one = lora_trainable_params(LLAMA_3_2_1B, 1)
    assert lora_trainable_params(LLAMA_3_2_1B, 16) == 16 * one, "linear in the rank"
    # notebook 4 reads the shapes by name
    assert LLAMA_SHAPES["Llama 3.2 1B"] is LLAMA_3_2_1B and LLAMA_SHAPES["Llama 2 7B"] is LLAMA_2_7B
    assert list(LLAMA_SHAPES) == ["Llama 3.2 1B", "Llama 3.2 3B", "Llama 3.1 8B", "Llama 2 7B"]


def test_method_estimates_follow_the_recipes():
    args = {"seq_len": 512, "batch_size": 4}
    params = 1_235_814_400
    for bf16 in (True, False):  # float32 master weights on Ampere and on a T4 alike
        full = method_estimate(LLAMA_3_2_1B, "full", bf16=bf16, **args)
        assert full["weights"] == full["gradients"] == 4 * params and full["optimizer_states"] == 8 * params
        assert full["autocast_copies"] == 2 * params, "autocast keeps a 16-bit copy of every float32 weight"
    embedding = 128256 * 2048  # the Trainer keeps nn.Embedding weights in 32-bit states under 8-bit AdamW
    assert (
        method_estimate(LLAMA_3_2_1B, "full, 8-bit", **args)["optimizer_states"] == 2 * params + 6 * embedding
    )
    lora, qlora = (method_estimate(LLAMA_3_2_1B, m, **args) for m in ("lora", "qlora"))
    assert qlora["weights"] < lora["weights"] < full["weights"], "a 16-bit base is half a float32 one"
    assert "autocast_copies" not in lora, "a 16-bit base needs no autocast copies"
    qlora_t4 = method_estimate(LLAMA_3_2_1B, "qlora", bf16=False, **args)
    assert qlora_t4["gradients"] == qlora["gradients"] == lora["gradients"], (
        "float32 adapters in both regimes"
    )
    peft_trl = method_estimate(LLAMA_3_2_1B, "qlora", upcast=True, adapter_fp32=False, **args)
    assert peft_trl["gradients"] == qlora["gradients"] // 2, "SFTTrainer's bf16 adapters"
    assert peft_trl["weights"] - qlora["weights"] > 2 * embedding - qlora["gradients"], "a float32 embedding"
    assert peft_trl["activations"] > qlora["activations"], "a float32 residual stream"
    with pytest.raises(ValueError, match="Unknown method 'dora': use one of full, full, 8-bit, lora, qlora"):
        method_estimate(LLAMA_3_2_1B, "dora", **args)


def test_copied_notebooks_dir_is_not_needed_for_missing_results(tmp_path):
    """A results folder that does not exist yet gives three 'missing' problems, not a crash."""
    found, problems = load_all(tmp_path / "nowhere", NOTEBOOKS)
    assert found == {} and len(problems) == 3
