"""Static checks of the committed notebooks: one clean run, honest first output, the lesson's calls in cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LESSON_CALLS = {
    "02_lora.ipynb": ["LoraConfig(", "get_peft_model(", "SFTConfig(", "SFTTrainer(", "merge_and_unload(", "pipeline("],
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def text_of(output: dict) -> str:
    if "text" in output:
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_there_are_notebooks():
    assert any(p.name == "02_lora.ipynb" for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_outputs_come_from_one_clean_run(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts are not 1..N: {counts}"
    errors = [o for c in code_cells(nb) for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name} has a stored error output"


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
    headings = [line for m in md for line in m.splitlines() if line.startswith("## ")]
    numbered = [int(m.group(1)) for h in headings if (m := re.match(r"## (\d+)\. ", h))]
    assert numbered == list(range(len(numbered))), f"sections are not numbered in order: {headings}"
    assert any("Summary" in h for h in headings) and "Exercises" in headings[-1]
    tagged = [c for c in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill convention)"
    assert 'REPORT_TO = "none"' in "".join(tagged[0]["source"])


@pytest.mark.parametrize("name", sorted(LESSON_CALLS))
def test_lesson_calls_are_written_in_the_notebook(name):
    source = "\n".join("".join(c["source"]) for c in code_cells(load(NOTEBOOKS / name)))
    for call in LESSON_CALLS[name]:
        assert call in source, f"{name} must show {call} in a cell, not hide it in a helper"
