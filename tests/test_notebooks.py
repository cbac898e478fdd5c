"""Static checks of the committed notebooks: a clean run, honest first output, the lesson's calls in cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
TRAINING = ["01_full_finetuning.ipynb", "02_lora.ipynb", "03_qlora.ipynb"]
LESSON_CALLS = {
    "01_full_finetuning.ipynb": ["SFTConfig(", "SFTTrainer(", "save_pretrained(", "pipeline("],
    "02_lora.ipynb": [
        "LoraConfig(",
        "get_peft_model(",
        "SFTConfig(",
        "SFTTrainer(",
        "merge_and_unload(",
        "pipeline(",
    ],
    "03_qlora.ipynb": [
        "BitsAndBytesConfig(",
        "prepare_model_for_kbit_training(",
        "LoraConfig(",
        "get_peft_model(",
        "SFTConfig(",
        "SFTTrainer(",
        "merge_and_unload(",
        ".dequantize()",
        "pipeline(",
    ],
}
RESULTS = Path(__file__).resolve().parent.parent / "results"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def text_of(output: dict) -> str:
    if "text" in output:
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_there_are_notebooks():
    assert set(TRAINING) <= {p.name for p in ALL}


def headings(nb: dict) -> list[str]:
    md = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    return [line for m in md for line in m.splitlines() if line.startswith("## ")]


def test_training_notebooks_share_their_section_headings():
    found = {name: headings(load(NOTEBOOKS / name)) for name in TRAINING}
    reference = found[TRAINING[0]]
    assert len(reference) >= 15
    for name, heads in found.items():
        assert heads == reference, f"{name} differs from {TRAINING[0]}: {sorted(set(heads) ^ set(reference))}"


def test_training_notebooks_share_the_parameters_cell():
    """Same data, budget, length and seed: the parameters cells are identical."""
    cells = {
        name: next(
            "".join(c["source"])
            for c in code_cells(load(NOTEBOOKS / name))
            if "parameters" in c["metadata"].get("tags", [])
        )
        for name in TRAINING
    }
    assert len(set(cells.values())) == 1, "the parameters cells differ between the training notebooks"


def section_code(nb: dict) -> dict[str, list[str]]:
    """{section heading: the sources of its code cells}."""
    sections, current = {}, None
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith("## "):
            current = text.splitlines()[0]
            sections[current] = []
        elif cell["cell_type"] == "code" and current is not None:
            sections[current].append(text)
    return sections


@pytest.mark.parametrize("name", TRAINING[1:])
def test_sections_said_to_be_the_same_as_notebook_1_are(name):
    nb = load(NOTEBOOKS / name)
    said_same = [
        "".join(c["source"]).splitlines()[0] for c in nb["cells"]
        if c["cell_type"] == "markdown" and "*Same code as notebook 1.*" in "".join(c["source"])
    ]
    assert len(said_same) >= 5
    mine, first = section_code(nb), section_code(load(NOTEBOOKS / TRAINING[0]))
    for head in said_same:
        assert mine[head] == first[head], (
            f"{name}, {head}: says 'Same code as notebook 1' but the code differs"
        )


@pytest.mark.parametrize("name", TRAINING)
def test_committed_results_come_from_the_committed_notebook(name):
    """results/<method>.json exists, is complete, and its accuracy is in the notebook's stored summary."""
    from helpers.results import RESULT_KEYS, load_results

    method = {"01": "full", "02": "lora", "03": "qlora"}[name[:2]]
    results = load_results(RESULTS / f"{method}.json")
    assert set(RESULT_KEYS) <= set(results) and results["method"] == method
    summary = "".join(text_of(o) for c in code_cells(load(NOTEBOOKS / name)) for o in c["outputs"]
                      if "Profile " in text_of(o) and "accuracy" in text_of(o))
    from helpers.evaluate import with_interval

    n = results["test_examples"]
    assert (
        f"before: task accuracy (all three fields exact) {with_interval(results['accuracy_before'], n)}"
        in summary
    )
    assert (
        f"after:  task accuracy (all three fields exact) {with_interval(results['accuracy_after'], n)}"
        in summary
    )
    assert f"Profile {results['profile']} on {results['device']}" in summary


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_outputs_come_from_one_clean_run(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    # the recipe in one cell is not run in the notebook (tests/test_recipes.py runs it)
    run = [c for c in code_cells(nb) if "skip-execution" not in c["metadata"].get("tags", [])]
    counts = [c["execution_count"] for c in run]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts are not 1..N: {counts}"
    errors = [o for c in code_cells(nb) for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name} has a stored error output"


MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/Users/|/tmp/|site-packages)")
LEFTOVERS = {
    "a progress-bar frame": re.compile(r"it/s\]"),
    "a machine path": MACHINE_PATH,
    "an object repr": re.compile(r" at 0x[0-9a-f]+"),
    "a display object's plain-text repr (the Trainer's HTML progress bar)": re.compile(
        r"<IPython\.core\.display\."
    ),
    "a Trainer log line (its text progress bar's)": re.compile(r"\{'(loss|train_runtime)': "),
}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_stored_outputs_hold_no_progress_bars_machine_paths_or_object_reprs(path):
    found = []
    for i, cell in enumerate(code_cells(load(path))):
        for output in cell["outputs"]:
            text = text_of(output)
            found += [f"cell {i}: {what}" for what, pattern in LEFTOVERS.items() if pattern.search(text)]
    assert not found, f"{path.name}: {found[:5]}"


def test_results_and_build_info_hold_no_machine_paths():
    root = NOTEBOOKS.parent
    for path in [
        *sorted((root / "results").glob("*.json")),
        root / "models" / "tiny-llama-support" / "build_info.json",
    ]:
        assert not MACHINE_PATH.search(path.read_text(encoding="utf-8")), f"{path.name} holds a machine path"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_first_output_states_profile_model_hardware_and_versions(path):
    nb = load(path)
    first = next(c for c in code_cells(nb) if c["outputs"])
    text = "".join(text_of(o) for o in first["outputs"])
    for word in ("Profile", "Model", "Hardware", "Precision", "Versions", "transformers"):
        assert word in text, f"{path.name}: the first output does not state {word}"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_course_shape(path):
    nb = load(path)
    md = [("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert md[0].startswith("# "), "the notebook starts with an H1 title"
    assert "In this notebook you will" in md[0]
    heads = headings(nb)
    numbered = [int(m.group(1)) for h in heads if (m := re.match(r"## (\d+)\. ", h))]
    assert numbered == list(range(len(numbered))), f"sections are not numbered in order: {heads}"
    assert any("Summary" in h for h in heads) and "Exercises" in heads[-1]
    tagged = [c for c in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill convention)"
    assert 'REPORT_TO = "none"' in "".join(tagged[0]["source"])



@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_exercise_has_a_hint_to_open_after_trying(path):
    last = "".join(load(path)["cells"][-1]["source"])
    exercises, _, hints = last.partition("<details>")
    count = len(re.findall(r"^\d+\. ", exercises, re.M))
    assert count >= 3, f"{path.name}: the last cell lists the exercises"
    assert "<summary>" in hints and "</details>" in hints, (
        f"{path.name}: hints are collapsed under the exercises"
    )
    assert len(re.findall(r"^\d+\. ", hints, re.M)) == count, f"{path.name}: one hint per exercise"

@pytest.mark.parametrize("name", sorted(LESSON_CALLS))
def test_lesson_calls_are_written_in_the_notebook(name):
    source = "\n".join("".join(c["source"]) for c in code_cells(load(NOTEBOOKS / name)))
    for call in LESSON_CALLS[name]:
        assert call in source, f"{name} must show {call} in a cell, not hide it in a helper"


# A figure that reads like a measurement: a number with a unit of memory, time, speed, share or speed-up.
RESULT_LIKE = re.compile(
    r"(?<![\w.])\d[\d,.]*\s*(?:%|percent\b|tokens/s\b|tokens per second\b|[GMK]iB\b|[GMK]B\b"
    r"|s\b|seconds?\b|min\b|minutes?\b|hours?\b)|(?<![\w.])\d+(?:\.\d+)?x\b"
)
# Figures that are not this course's results, each with why. Anything else must be printed by a code cell.
NOT_OUR_RESULTS = {
    r"(?:T4|L4|A10G|A100|H100|H200|RTX 4090|GPU)\s\d+ GB"
    r"|\d+ GB (?:T4|L4|A100|H100|GPU)": "a GPU's published memory",
    r"\(\d+ MiB in `nvidia-smi`": "a T4's memory as nvidia-smi reports it (published)",
    r"memory capped at \d+ GiB|(?:the|a) \d+ GiB cap": "the T4 regime's cap: a setting, not a result",
    r"95% (?:interval|confidence)": "the confidence level of an interval: a setting",
    r"= [\d,.]+ \w+": "arithmetic worked out in the same sentence",
    r"\d+% of the update": "a threshold an exercise sets",
    r"off by more than \d+%": "the estimator's tolerance, which a test sets",
    r"the \"4x\"": "the folk claim the summary tests, quoted",
}


def unsourced_figures(markdown: str) -> list[str]:
    """The result-like figures in markdown that are not on the NOT_OUR_RESULTS list."""
    for pattern in NOT_OUR_RESULTS:
        markdown = re.sub(pattern, " ", markdown)
    return [m.group(0) for m in RESULT_LIKE.finditer(markdown)]


def test_the_figure_scan_catches_typed_in_results():
    typed = "LoRA training took 189 s; QLoRA was 9.85% slower at 3,957 tokens/s, 1.49x naive, peak 1.12 GiB."
    assert unsourced_figures(typed) == ["189 s", "9.85%", "3,957 tokens/s", "1.49x", "1.12 GiB"]
    assert unsourced_figures("a free Colab T4 16 GB (15360 MiB in `nvidia-smi`), a 95% interval") == []


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_markdown_types_in_no_result(path):
    """Figures from this course's runs are printed by code cells from results files, never typed."""
    found = []
    for index, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "markdown":
            found += [f"cell {index}: {figure}" for figure in unsourced_figures("".join(cell["source"]))]
    assert not found, (
        f"{path.name}: typed-in figures "
        f"(print them from a code cell, or list why they are not results): {found}"
    )
