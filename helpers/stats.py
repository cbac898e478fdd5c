"""Paired comparisons of two methods on the same examples (one run or several); a rate's Wilson interval."""

from __future__ import annotations

import math

import numpy as np


def paired(first: dict[str, float], second: dict[str, float]) -> tuple[list[float], list[float]]:
    """The two methods' values on the examples both measured, in one order (ids shared by both dicts)."""
    shared = [key for key in first if key in second]
    if not shared:
        raise ValueError(
            "The two methods share no example ids, so they cannot be compared pair by pair. "
            "Rerun both notebooks on the same test and validation examples."
        )
    return [first[key] for key in shared], [second[key] for key in shared]


def mcnemar_exact(first: list[int] | dict[str, int], second: list[int] | dict[str, int]) -> dict:
    """McNemar's exact test on paired right (1) / wrong (0) outcomes: two-sided p-value and discordant counts.

    first and second: two lists in one example order, or two dicts example id -> outcome, compared on the
    ids both hold (as `paired` matches them). Only the examples where the two differ carry information:
    `only_first` right by the first method alone, `only_second` by the second alone. With no difference
    between the methods, each such example is a fair coin.
    """
    if isinstance(first, dict) and isinstance(second, dict):
        first, second = paired(first, second)
    if len(first) != len(second):
        raise ValueError(f"mcnemar_exact needs paired outcomes: got {len(first)} and {len(second)}.")
    only_first = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    only_second = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    n = only_first + only_second
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return {"n": len(first), "only_first": only_first, "only_second": only_second, "p": min(1.0, 2 * tail)}


def paired_difference(first: list[float], second: list[float], z: float = 1.96) -> dict:
    """Mean of second - first over paired examples, with a 95% interval (normal approximation, z=1.96)."""
    if len(first) != len(second) or len(first) < 2:
        raise ValueError(
            f"paired_difference needs at least two pairs of equal length: got {len(first)} and {len(second)}."
        )
    diffs = [b - a for a, b in zip(first, second, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = z * sd / math.sqrt(len(diffs))
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}


def differs(test: dict, alpha: float = 0.05) -> bool:
    """Whether a paired test says the two methods differ: p below alpha, or an interval that excludes 0."""
    if "p" in test:
        return test["p"] < alpha
    return test["low"] > 0 or test["high"] < 0


def across_seeds(first: list[dict[str, float]], second: list[dict[str, float]], reps: int = 4000,
                 seed: int = 0) -> dict:
    """Mean of second - first over training runs and shared examples, a 95% bootstrap interval and a p-value.

    first and second hold one dict per training run (seed), example id -> score. Each bootstrap draw resamples
    each method's runs, then the examples (the same examples for both methods), so the interval counts both
    sources of noise: which run you trained, and which questions you tested it on. With few runs it is still
    too narrow, not too wide: three seeds are the least that shows the spread between runs at all.
    """
    ids = [key for key in first[0] if all(key in run for run in first + second)]
    if len(first) < 2 or len(second) < 2 or len(ids) < 2:
        raise ValueError(
            f"across_seeds needs two or more runs per method on shared examples: got {len(first)} and "
            f"{len(second)} runs sharing {len(ids)} examples. "
            "Run scripts/study.py for more seeds."
        )
    a = np.array([[run[key] for key in ids] for run in first], dtype=float)
    b = np.array([[run[key] for key in ids] for run in second], dtype=float)
    rng = np.random.default_rng(seed)
    draws = np.empty(reps)
    for i in range(reps):
        weights = np.bincount(rng.integers(len(ids), size=len(ids)), minlength=len(ids)) / len(ids)
        runs_a, runs_b = rng.integers(len(a), size=len(a)), rng.integers(len(b), size=len(b))
        draws[i] = (b[runs_b] @ weights).mean() - (a[runs_a] @ weights).mean()
    low, high = np.quantile(draws, [0.025, 0.975])
    # two-sided: how often a draw falls on the far side of 0
    p = min(1.0, 2 * min((draws <= 0).sum() + 1, (draws >= 0).sum() + 1) / (reps + 1))
    return {"runs": (len(a), len(b)), "n": len(ids), "mean": float(b.mean() - a.mean()), "low": float(low),
            "high": float(high), "p": p}


def holm(p_values: dict, alpha: float = 0.05) -> dict:
    """Holm's correction over several comparisons: each key -> (adjusted p, whether it differs at alpha)."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        adjusted[key] = running
    return {key: (adjusted[key], adjusted[key] < alpha) for key in p_values}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval (z=1.96) for a success rate measured on n examples."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs at least one example, got n={n}.")
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
