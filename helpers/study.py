"""The learning-rate study (scripts/study.py, results/study.json): each method's pick, its seeds, verdicts."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np

from helpers import ROOT
from helpers.stats import across_seeds, holm

STUDY = ROOT / "results" / "study.json"
GRID_SEED = 42  # the notebooks' seed: every grid rate is trained with it
# what each verdict compares, and which way is better: per-example scores, lower or higher
MEASURES = {"accuracy": ("test_scores", "higher"), "eval loss": ("val_losses", "lower"),
            "forgetting": ("general_rise", "lower")}


def load_study(path: str | Path = STUDY) -> dict:
    """results/study.json, with a clear message when it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No study at {path}: run `make study` (about an hour on 2 CPU cores).")
    return json.loads(path.read_text(encoding="utf-8"))


def grid_runs(runs: list[dict], method: str) -> dict[float, dict]:
    """The method's runs at the grid's seed, by learning rate."""
    return {run["learning_rate"]: run for run in runs if run["method"] == method and run["seed"] == GRID_SEED}


def pick(runs: list[dict], method: str) -> float:
    """The learning rate with the lowest validation loss at the grid's seed (the test set takes no part)."""
    grid = grid_runs(runs, method)
    return min(grid, key=lambda rate: grid[rate]["eval_loss"])


def turns_up(runs: list[dict], method: str) -> bool:
    """Whether the validation loss is higher at a tried rate on each side of the pick."""
    grid, best = grid_runs(runs, method), pick(runs, method)
    return any(r < best for r in grid) and any(r > best for r in grid)


def seed_runs(study: dict, method: str) -> list[dict]:
    """The method's runs at its pick, one per seed, each with its per-paragraph general-text rise."""
    best, base = pick(study["runs"], method), study["baselines"][method]["general_per_text"]
    runs = [run for run in study["runs"] if run["method"] == method and run["learning_rate"] == best]
    return [{**run, "general_rise": rise(run, base)} for run in sorted(runs, key=lambda run: run["seed"])]


def rise(run: dict, base: list[float]) -> dict[str, float]:
    """Each general-text paragraph's loss after training minus before: a rise is forgetting."""
    return {
        str(i): after - before
        for i, (after, before) in enumerate(zip(run["general_per_text"], base, strict=True))
    }


def spread(study: dict, method: str) -> dict:
    """A method's accuracy, eval loss and forgetting over its seeds at the pick: mean, lowest, highest."""
    runs = seed_runs(study, method)
    values = {"accuracy": [run["accuracy"] for run in runs], "eval loss": [run["eval_loss"] for run in runs],
              "forgetting": [float(np.mean(list(run["general_rise"].values()))) for run in runs]}
    return {name: {"mean": float(np.mean(v)), "low": min(v), "high": max(v), "seeds": len(v)}
            for name, v in values.items()}


def verdicts(study: dict, alpha: float = 0.05) -> dict[str, dict[tuple[str, str], dict]]:
    """Per measure and pair of methods: the across-seed interval of second - first, Holm-corrected."""
    methods = [m for m in ("full", "lora", "qlora") if m in study["baselines"]]
    runs = {m: seed_runs(study, m) for m in methods}
    result = {}
    for name, (key, _) in MEASURES.items():
        tests = {(a, b): across_seeds([r[key] for r in runs[a]], [r[key] for r in runs[b]])
                 for a, b in combinations(methods, 2)}
        corrected = holm({pair: test["p"] for pair, test in tests.items()}, alpha)
        result[name] = {pair: {**test, "p_holm": corrected[pair][0], "differs": corrected[pair][1]}
                        for pair, test in tests.items()}
    return result


def verdict_line(name: str, pair: tuple[str, str], test: dict) -> str:
    """One comparison in words: which method is better on the measure, or 'not shown different'."""
    first, second = pair
    unit, scale = ("points", 100) if name == "accuracy" else ("nats", 1)
    better = MEASURES[name][1]
    interval = (
        f"{second} - {first}: {test['mean'] * scale:+.2f} {unit} (95% interval {test['low'] * scale:+.2f} "
        f"to {test['high'] * scale:+.2f}, {test['runs'][0]} and {test['runs'][1]} seeds, "
        f"p = {test['p_holm']:.3f} after Holm)"
    )
    if not test["differs"]:
        return f"{name}, {first} vs {second}: not shown different; {interval}"
    second_better = (test["mean"] > 0) == (better == "higher")
    winner, loser = (second, first) if second_better else (first, second)
    word = {"accuracy": "more accurate", "eval loss": "lower eval loss", "forgetting": "forgot less"}[name]
    return f"{name}: {winner} {word} than {loser}; {interval}"


def frontier(study: dict, method: str) -> list[tuple[float, float, float]]:
    """Each grid run as (learning rate, validation loss, mean general-text rise): learning vs forgetting."""
    base = study["baselines"][method]["general_per_text"]
    return [(rate, run["eval_loss"], float(np.mean(list(rise(run, base).values()))))
            for rate, run in sorted(grid_runs(study["runs"], method).items())]


def forgetting_at(points: list[tuple[float, float, float]], loss: float) -> float | None:
    """Forgetting at a validation loss, read off rates up to the pick (loss falls as they rise), or None."""
    best = min(range(len(points)), key=lambda i: points[i][1])
    rising = points[: best + 1]
    for (_, loss_a, forget_a), (_, loss_b, forget_b) in zip(rising, rising[1:], strict=False):
        if min(loss_a, loss_b) <= loss <= max(loss_a, loss_b) and loss_a != loss_b:
            return forget_a + (forget_b - forget_a) * (loss - loss_a) / (loss_b - loss_a)
    return points[best][2] if loss == points[best][1] else None


def least_forgetting(
    points: list[tuple[float, float, float]], loss: float
) -> tuple[float, float, float] | None:
    """Of the runs that learned at least as much as `loss`, the one that forgot least; None if none did.

    As (learning rate, validation loss, forgetting); the point where the curve crosses `loss` counts too.
    """
    reached = [p for p in points if p[1] <= loss]
    crossing = forgetting_at(points, loss)
    if crossing is not None:
        reached.append((float("nan"), loss, crossing))
    return min(reached, key=lambda p: p[2], default=None)


def matched_learning(study: dict, first: str, second: str) -> str:
    """Which of two methods forgot less while learning at least as much, or 'not shown'.

    The level is the worse of the two methods' best validation losses: both reach it. Each method is read at
    its least forgetting among its runs at or below that loss (and where its curve crosses it). A gap counts
    only when it exceeds the larger of the two methods' forgetting spreads over seeds at their picks.
    """
    a, b = frontier(study, first), frontier(study, second)
    level = max(min(p[1] for p in a), min(p[1] for p in b))
    best_a, best_b = least_forgetting(a, level), least_forgetting(b, level)
    forgetting = [spread(study, m)["forgetting"] for m in (first, second)]
    noise = max(f["high"] - f["low"] for f in forgetting)

    def where(method: str, point: tuple[float, float, float]) -> str:
        # a rate of nan marks a crossing
        rate = "where its curve crosses it" if point[0] != point[0] else f"at rate {point[0]:g}"
        return f"{method} {rate}: validation loss {point[1]:.3f}, forgetting {point[2]:+.3f}"

    found = (
        f"learning at least to validation loss {level:.3f}: {where(first, best_a)}; {where(second, best_b)}"
    )
    if abs(best_a[2] - best_b[2]) <= noise:
        return f"{first} vs {second}: not shown ({found}; within the seed spread of {noise:.3f})"
    less = first if best_a[2] < best_b[2] else second
    return f"{first} vs {second}: {less} forgot less ({found}; beyond the seed spread of {noise:.3f})"
