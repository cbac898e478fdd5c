"""Your own data: an Alpaca file is loaded, its replies scored with chrF, and the comparison says so."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import test_compare
import test_gpu_check
import test_models
import test_precision
from test_data import write_jsonl

from helpers.chat import CHAT_TEMPLATE_KWARGS
from helpers.compare import comparison_rows, load_all
from helpers.data import load_dataset_any, to_conversational
from helpers.evaluate import reply_scores
from helpers.scoring import headline

# the tiny model and its tokenizer, and the results and notebooks folders, as in those modules
model, tokenizer, dirs = test_models.model, test_models.tokenizer, test_compare.dirs

PETS = [("cat", "grey", "Misty"), ("dog", "brown", "Biscuit"), ("parrot", "green", "Kiwi"),
        ("rabbit", "white", "Snowball"), ("goldfish", "orange", "Sunny"), ("hamster", "golden", "Nugget")]
SUMS = [(2, 3), (10, 7), (41, 1), (6, 6), (9, 0), (12, 30)]


def alpaca_rows() -> list[dict]:
    """Twelve invented Alpaca-format examples (instruction, input, output), none with the header lines."""
    names = [
        {
            "instruction": f"Suggest a name for a {pet}.",
            "input": colour,
            "output": f"{name} the {colour} {pet}",
        }
        for pet, colour, name in PETS
    ]
    return names + [
        {"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)} for a, b in SUMS
    ]


def test_an_alpaca_file_is_scored_with_chrf_and_compared_as_chrf(model, tokenizer, dirs, tmp_path):
    path = write_jsonl(tmp_path / "pets.jsonl", alpaca_rows())
    dataset = to_conversational(load_dataset_any(str(path)), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    scores, replies = reply_scores(model, tokenizer, dataset["train"], max_new_tokens=8)  # no ValueError
    assert scores["metric"] == "chrF" and scores["n"] == len(replies) == len(dataset["train"]) == 10
    assert 0 <= scores["chrF"] <= 100 and 0 <= scores["chrF_mean"] <= 100

    results, notebooks = dirs
    for method in test_compare.NOTEBOOK_OF:
        test_compare.write_result(
            results,
            notebooks,
            method,
            metric=scores["metric"],
            test_examples=scores["n"],
            accuracy_before=headline(scores),
            accuracy_after=42.25,
        )
    found, problems = load_all(results, notebooks)
    assert problems == []
    rows = comparison_rows(found)
    assert rows["chrF before -> after"]["lora"] == f"{headline(scores):.1f} -> 42.2"
    assert "accuracy before -> after" not in rows and "  95% interval after" not in rows  # not a rate


def test_results_scored_with_different_metrics_are_not_compared(dirs):
    results, notebooks = dirs
    test_compare.write_result(results, notebooks, "full")  # an older file without "metric": task accuracy
    test_compare.write_result(
        results, notebooks, "lora", metric="chrF", accuracy_before=10.0, accuracy_after=30.0
    )
    found, problems = load_all(results, notebooks)
    missing_qlora, problem = problems
    assert missing_qlora.startswith("qlora: No results file")
    assert (
        "different metrics (full: task accuracy; lora: chrF)" in problem
        and "same COURSE_PROFILE and DATA" in problem
    )
    rows = comparison_rows(found)
    assert rows["accuracy before -> after"] == {"full": "0.0% -> 50.0%"}
    assert rows["chrF before -> after"] == {"lora": "10.0 -> 30.0"}


def run_notebook_2(
    tmp_path: Path, data: Path | str, notebook: str = "02_lora", **env: str
) -> tuple[subprocess.CompletedProcess, dict, nbformat.NotebookNode]:
    """Notebook 2 (or another training notebook) with COURSE_DATA=data: (process, summary, executed copy).

    It runs under the smoke budget, on the tiny profile unless env says otherwise.
    """
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    done = test_gpu_check.run_course(
        "--out",
        str(out),
        "--summary",
        str(summary),
        "--no-compare",
        str(test_gpu_check.ROOT / "notebooks" / f"{notebook}.ipynb"),
        cwd=test_gpu_check.ROOT,
        **{"COURSE_PROFILE": "tiny", **env},
        COURSE_SMOKE="1",
        COURSE_DATA=str(data),
        TQDM_DISABLE="1",
        COURSE_RESULTS_DIR=str(tmp_path / "results"),
        COURSE_OUTPUT_DIR=str(tmp_path / "outputs"),
    )
    return done, json.loads(summary.read_text()), nbformat.read(out / f"{notebook}.ipynb", as_version=4)


def cell_text(nb: nbformat.NotebookNode, needle: str) -> str:
    """The stdout and error text of the one code cell whose source holds needle."""
    [cell] = [c for c in nb.cells if c.cell_type == "code" and needle in c.source
              and "recipe" not in c.metadata.get("tags", [])]
    return "".join(o.get("text", "") + o.get("evalue", "") for o in cell.outputs)


def test_notebook_2_trains_on_an_alpaca_file_to_the_end(tmp_path):
    rows = alpaca_rows() + [
        {"instruction": "Add the numbers.", "input": f"{a} + {a + 1}", "output": str(2 * a + 1)}
        for a in range(20, 38)
    ]  # 30 rows: 3 are split off for validation, 3 for test
    path = write_jsonl(tmp_path / "pets.jsonl", rows)
    done, summary, nb = run_notebook_2(tmp_path, path)
    assert done.returncode == 0 and summary["ok"], done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{path} {{'train': 4, 'validation': 3, 'test': 2}}" in cell_text(nb, "raw = load_dataset_any(")
    after = cell_text(nb, 'print("after: ", score_line(scores_after))')
    assert "before: chrF " in after and "after:  chrF " in after and "n=2" in after
    results = json.loads((tmp_path / "results" / "lora.json").read_text())
    assert (
        results["metric"] == "chrF"
        and results["config"]["data"] == str(path)
        and results["test_examples"] == 2
    )
    assert 0 <= results["accuracy_before"] <= 100 and 0 <= results["accuracy_after"] <= 100
    assert "accuracy_by_field_after" not in results  # no header fields to score in these replies


@pytest.mark.parametrize("name", ["01_full_finetuning.ipynb", "02_lora.ipynb", "03_qlora.ipynb"])
def test_bad_data_stops_at_the_notebooks_data_cell_with_the_loaders_error(tokenizer, tmp_path, name):
    """The data cell (run here without a kernel) raises the loader's error, before any model sees the data."""
    rows = alpaca_rows()
    rows[3]["output"] = "   "  # a blank reply: nothing to learn from
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    namespace = {
        "DATA": str(path),
        "COLUMN_MAP": None,
        "TRAIN_EXAMPLES": 8,
        "EVAL_EXAMPLES": 4,
        "TEST_EXAMPLES": 2,
        "MAX_LENGTH": 256,
        "tokenizer": tokenizer,
    }
    with pytest.raises(
        ValueError,
        match=re.escape(f"{path}: 'completion' is empty or only whitespace in 1 row(s), first rows [3]"),
    ):
        test_precision.run_cells(name, ["raw = load_dataset_any("], namespace)
    assert "raw" not in namespace  # stopped at the loader, before the chat format or the length check
