"""Issue 13, your own data: an Alpaca file is loaded, its replies scored with chrF, and the comparison says so."""

from __future__ import annotations

import json

import test_compare
import test_models

from helpers.compare import comparison_rows, load_all
from helpers.data import headline, load_dataset_any, to_conversational
from helpers.evaluate import reply_scores
from helpers.models import CHAT_TEMPLATE_KWARGS

# the tiny model and its tokenizer, and the results and notebooks folders, as in those modules
model, tokenizer, dirs = test_models.model, test_models.tokenizer, test_compare.dirs

PETS = [("cat", "grey", "Misty"), ("dog", "brown", "Biscuit"), ("parrot", "green", "Kiwi"),
        ("rabbit", "white", "Snowball"), ("goldfish", "orange", "Sunny"), ("hamster", "golden", "Nugget")]
SUMS = [(2, 3), (10, 7), (41, 1), (6, 6), (9, 0), (12, 30)]


def alpaca_rows() -> list[dict]:
    """Twelve invented Alpaca-format examples (instruction, input, output), none with the support header lines."""
    names = [
        {"instruction": f"Suggest a name for a {pet}.", "input": colour, "output": f"{name} the {colour} {pet}"}
        for pet, colour, name in PETS
    ]
    return names + [{"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)} for a, b in SUMS]


def test_an_alpaca_file_is_scored_with_chrf_and_compared_as_chrf(model, tokenizer, dirs, tmp_path):
    path = tmp_path / "pets.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in alpaca_rows()), encoding="utf-8")
    dataset = to_conversational(load_dataset_any(str(path)), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    scores, replies = reply_scores(model, tokenizer, dataset["train"], max_new_tokens=8)  # no ValueError
    assert scores["metric"] == "chrF" and scores["n"] == len(replies) == len(dataset["train"]) == 10
    assert 0 <= scores["chrF"] <= 100 and 0 <= scores["chrF_mean"] <= 100

    results, notebooks = dirs
    for method in test_compare.NOTEBOOK_OF:
        test_compare.write_result(results, notebooks, method, metric=scores["metric"], test_examples=scores["n"],
                                  accuracy_before=headline(scores), accuracy_after=42.25)
    found, problems = load_all(results, notebooks)
    assert problems == []
    rows = comparison_rows(found)
    assert rows["chrF before -> after"]["lora"] == f"{headline(scores):.1f} -> 42.2"
    assert "accuracy before -> after" not in rows and "  95% interval after" not in rows  # not a rate


def test_results_scored_with_different_metrics_are_not_compared(dirs):
    results, notebooks = dirs
    test_compare.write_result(results, notebooks, "full")  # an older file without "metric": task accuracy
    test_compare.write_result(results, notebooks, "lora", metric="chrF", accuracy_before=10.0, accuracy_after=30.0)
    found, problems = load_all(results, notebooks)
    missing_qlora, problem = problems
    assert missing_qlora.startswith("qlora: No results file")
    assert "different metrics (full: task accuracy; lora: chrF)" in problem and "same COURSE_PROFILE and DATA" in problem
    rows = comparison_rows(found)
    assert rows["accuracy before -> after"] == {"full": "0.0% -> 50.0%"}
    assert rows["chrF before -> after"] == {"lora": "10.0 -> 30.0"}
