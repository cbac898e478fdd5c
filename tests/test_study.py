"""The learning-rate study: the grid widens until the loss turns up, verdicts over seeds, a smoke run."""

from __future__ import annotations

import json
import random
import sys

import pytest

from helpers import ROOT
from helpers.recipe import LEARNING_RATES
from helpers.stats import mcnemar_exact, paired
from helpers.study import (
    frontier,
    grid_runs,
    load_study,
    matched_learning,
    pick,
    seed_runs,
    spread,
    turns_up,
    verdict_line,
    verdicts,
)

sys.path.insert(0, str(ROOT / "scripts"))
import study as study_script  # noqa: E402


def _run(method, rate, seed, eval_loss, accuracy, rise, questions=200, paragraphs=20):
    rng = random.Random(hash((method, rate, seed)) % 2**32)
    right = set(rng.sample(range(questions), round(accuracy * questions)))
    return {
        "method": method, "learning_rate": rate, "seed": seed, "eval_loss": eval_loss, "accuracy": accuracy,
        "val_losses": {f"v{i}": eval_loss + rng.gauss(0, 0.05) for i in range(questions)},
        "test_scores": {f"q{i}": int(i in right) for i in range(questions)},
        "general_per_text": [1.0 + rise + rng.gauss(0, 0.02) for _ in range(paragraphs)],
    }


def made_up_study():
    """full learns best and forgets most; lora and qlora alike, each run of them a little different."""
    runs = []
    for method, rates, best in (("full", (1e-4, 3e-4, 1e-3), 3e-4), ("lora", (1e-3, 3e-3, 1e-2), 3e-3),
                                ("qlora", (1e-3, 3e-3, 1e-2), 3e-3)):
        for i, rate in enumerate(rates):
            loss = {0: 0.9, 1: 0.5, 2: 0.8}[i] - (0.3 if method == "full" else 0)
            runs.append(
                _run(
                    method,
                    rate,
                    42,
                    loss,
                    0.9 if rate == best else 0.6,
                    0.2 * (i + 1) * (2 if method == "full" else 1),
                )
            )
        for seed, wobble in ((43, 0.03), (44, -0.03)):
            runs.append(
                _run(
                    method,
                    best,
                    seed,
                    0.5 + wobble - (0.3 if method == "full" else 0),
                    0.9 + wobble,
                    0.4 * (2 if method == "full" else 1) + wobble,
                )
            )
    base = {m: {"eval_loss": 3.0, "general_per_text": [1.0] * 20} for m in ("full", "lora", "qlora")}
    return {"runs": runs, "baselines": base}


def test_the_pick_is_the_lowest_validation_loss_and_the_grid_widens_past_an_edge():
    study = made_up_study()
    assert pick(study["runs"], "full") == 3e-4 and turns_up(study["runs"], "full")
    first_grid = (1e-3, 3e-3, 1e-2, 3e-2)
    losses = (0.4, 0.5, 0.6, 0.7)
    lowest_at_edge = [
        _run("lora", rate, 42, loss, 0.5, 0.1) for rate, loss in zip(first_grid, losses, strict=True)
    ]
    # the first grid comes first
    assert study_script.next_rate(lowest_at_edge[:2], "lora", first_grid) == 1e-2
    # one step below the lowest edge
    assert study_script.next_rate(lowest_at_edge, "lora", first_grid) == 3e-4
    assert not turns_up(lowest_at_edge, "lora")
    widened = lowest_at_edge + [_run("lora", 3e-4, 42, 0.45, 0.5, 0.1)]
    assert study_script.next_rate(widened, "lora", first_grid) is None and turns_up(widened, "lora")
    flat_edge = widened[:3] + [_run("lora", 3e-2, 42, 0.41, 0.5, 0.1)]  # 0.41: within 5% of the lowest, 0.4
    assert study_script.next_rate(flat_edge + widened[4:], "lora", first_grid) == 1e-1
    assert study_script.next_rate(lowest_at_edge, "lora", first_grid, widen=False) is None  # --smoke


def test_verdicts_name_a_difference_only_where_it_holds_over_seeds():
    study = made_up_study()
    found = verdicts(study)
    assert found["eval loss"][("full", "lora")]["differs"]  # 0.3 nats lower in every run
    assert "full lower eval loss than lora" in verdict_line(
        "eval loss", ("full", "lora"), found["eval loss"][("full", "lora")]
    )
    same = found["accuracy"][("lora", "qlora")]
    assert not same["differs"] and "not shown different" in verdict_line("accuracy", ("lora", "qlora"), same)
    assert spread(study, "lora")["accuracy"]["seeds"] == 3
    assert spread(study, "full")["forgetting"]["mean"] == pytest.approx(0.8, abs=0.02)


def test_mcnemar_pairs_two_seeds_test_scores_by_example_id():
    """Notebook 4 passes each seed's test_scores (id -> 0 or 1) to mcnemar_exact as they are."""
    first, second = (seed_runs(made_up_study(), m)[0]["test_scores"] for m in ("full", "lora"))
    shuffled = dict(reversed(list(second.items())))  # another order: matched by id, not by position
    assert mcnemar_exact(first, shuffled) == mcnemar_exact(*paired(first, second))
    assert mcnemar_exact({"a": 1, "b": 0}, {"b": 1, "c": 1}) == mcnemar_exact([0], [1])  # the shared id only


def test_the_frontier_compares_forgetting_at_the_same_validation_loss():
    study = made_up_study()
    assert [round(point[1], 2) for point in frontier(study, "lora")] == [0.9, 0.5, 0.8]
    # lora and qlora trace the same curve: nothing to tell them apart
    assert "not shown" in matched_learning(study, "lora", "qlora")
    # full's curve lies below lora's loss range only partly: at the loss both reach, full forgot more
    verdict = matched_learning(study, "full", "lora")
    assert "lora forgot less" in verdict, verdict


def test_the_study_script_runs_resumes_and_records_each_example(tmp_path, capsys):
    out = tmp_path / "study.json"
    command = ["--smoke", "--methods", "lora", "--seeds", "2", "--out", str(out)]
    study_script.main(command)  # in this process: no second start of torch and transformers
    first = capsys.readouterr().out
    study = json.loads(out.read_text())
    grid = {run["learning_rate"] for run in study["runs"] if run["seed"] == 42}
    assert len(grid) == 2 and study["picks"]["lora"] in grid and "lora: picked" in first
    seeds = sorted(run["seed"] for run in study["runs"] if run["learning_rate"] == study["picks"]["lora"])
    assert seeds == [42, 43]
    run = study["runs"][0]
    assert len(run["val_losses"]) == 4 and len(run["test_scores"]) == 2 and len(run["general_per_text"]) == 2
    assert str(ROOT) not in out.read_text() and study["machine"].startswith("cpu")
    before = out.read_bytes()
    study_script.main(command)
    assert "[run" not in capsys.readouterr().out  # everything was done: nothing retrained ...
    assert out.read_bytes() == before  # ... and the file keeps the commit and date of its runs


def test_the_committed_study_turns_up_around_each_pick_and_the_readme_shows_it():
    committed = load_study()
    for method in ("full", "lora", "qlora"):
        assert len(grid_runs(committed["runs"], method)) >= 4 and turns_up(committed["runs"], method), method
        assert committed["picks"][method] == pick(committed["runs"], method)
        assert spread(committed, method)["accuracy"]["seeds"] >= 3
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- study table -->" in readme
    assert study_script.readme_block(readme, committed) == readme, "run python scripts/study.py --readme"


def test_the_notebooks_train_at_the_studys_picks_and_their_runs_are_the_studys():
    committed = load_study()
    for method in ("full", "lora", "qlora"):
        assert LEARNING_RATES[method][0] == committed["picks"][method], (
            f"{method}: set LEARNING_RATES to make study's pick"
        )
        config = json.loads((ROOT / "results" / f"{method}.json").read_text())["config"]
        assert config["learning_rate"] == committed["picks"][method], f"rerun notebook {method} (make course)"
        assert any(run["method"] == method and run["learning_rate"] == config["learning_rate"]
                   and run["seed"] == config["seed"] for run in committed["runs"])
