"""Paired comparisons: two methods measured on the same examples, matched by example id."""

from __future__ import annotations

import math


def paired(first: dict[str, float], second: dict[str, float]) -> tuple[list[float], list[float]]:
    """The two methods' values on the examples both measured, in one order (ids shared by both dicts)."""
    shared = [key for key in first if key in second]
    if not shared:
        raise ValueError(
            "The two methods share no example ids, so they cannot be compared pair by pair. "
            "Rerun both notebooks on the same test and validation examples."
        )
    return [first[key] for key in shared], [second[key] for key in shared]


def mcnemar_exact(first: list[int], second: list[int]) -> dict:
    """McNemar's exact test on paired right (1) / wrong (0) outcomes: the two-sided p-value and the discordant counts.

    Only the examples where the two differ carry information: `only_first` right by the first method alone,
    `only_second` by the second alone. With no difference between the methods, each such example is a fair coin.
    """
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
        raise ValueError(f"paired_difference needs at least two pairs of equal length: got {len(first)} and {len(second)}.")
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
