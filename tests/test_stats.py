"""Paired tests and the method guidance of notebook 4, on made-up results."""

import math

import pytest

from helpers.compare import course_speeds, recommend, same_machine, seed_noise
from helpers.stats import (
    across_seeds,
    differs,
    holm,
    mcnemar_exact,
    paired,
    paired_difference,
    wilson_interval,
)


def test_mcnemar_exact_counts_only_the_examples_where_the_methods_differ():
    first = [1] * 12 + [0] * 3 + [1] * 50 + [0] * 35
    second = [0] * 12 + [1] * 3 + [1] * 50 + [0] * 35
    test = mcnemar_exact(first, second)
    assert (test["only_first"], test["only_second"], test["n"]) == (12, 3, 100)
    assert test["p"] == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)  # 0.0352
    assert differs(test)
    assert mcnemar_exact([1, 0, 1, 0], [0, 1, 1, 0])["p"] == 1.0  # one each way: no evidence
    assert not differs(mcnemar_exact([1, 1, 0], [1, 1, 0]))  # identical: p = 1
    with pytest.raises(ValueError, match="paired outcomes"):
        mcnemar_exact([1], [1, 0])


def test_paired_difference_and_ids():
    a, b = paired({"x": 1.0, "y": 2.0, "z": 3.0, "w": 9.0}, {"z": 3.5, "y": 2.4, "x": 1.6})
    assert a == [1.0, 2.0, 3.0] and b == [1.6, 2.4, 3.5]  # matched by id, unshared ids dropped
    diff = paired_difference(a, b)
    assert diff["mean"] == pytest.approx(0.5) and diff["low"] < 0.5 < diff["high"]
    assert differs(diff)  # every pair rose by 0.4-0.6
    assert not differs(paired_difference([1.0, 2.0, 3.0], [1.5, 1.5, 3.0]))
    with pytest.raises(ValueError, match="share no example ids"):
        paired({"a": 1.0}, {"b": 1.0})


def options(full_fits=True):
    return {
        "full": {"fits": full_fits, "need_bytes": 24e9, "tokens_per_second": 24000},
        "lora": {"fits": True, "need_bytes": 4e9, "tokens_per_second": 39000},
        "qlora": {"fits": True, "need_bytes": 3.5e9, "tokens_per_second": 34000},
    }


def test_recommend_chooses_full_fine_tuning_where_it_is_significantly_better_and_fits():
    better = {("full", "lora"), ("full", "qlora")}
    assert recommend(options(), better, 0.05)[0] == "full"
    assert recommend(options(full_fits=False), better, 0.05)[0] == "lora"  # then the fastest of the rest


def test_recommend_chooses_the_cheapest_that_fits_when_the_methods_tie():
    choice, why = recommend(options(), set(), 0.05)
    assert choice == "lora" and "fastest" in why  # full and qlora are slower beyond the noise
    # within 20% noise lora and qlora tie: less memory wins
    assert recommend(options(), set(), 0.20)[0] == "qlora"
    assert recommend({m: {**o, "fits": False} for m, o in options().items()}, set(), 0.05) == (
        None,
        "nothing fits",
    )
    # lora beaten: qlora is the fastest left
    assert recommend(options(), {("qlora", "lora")}, 0.05)[0] == "qlora"


def test_an_unmeasured_speed_ties_instead_of_losing():
    unmeasured = {**options(), "full": {"fits": True, "need_bytes": 1e9, "tokens_per_second": None}}
    choice, why = recommend(unmeasured, set(), 0.05)
    assert choice == "full" and "ties with lora" in why  # lora is the fastest measured; full may be as fast


def test_seed_noise_is_the_largest_gap_a_second_seed_gave():
    run = {"rows": [
        {"method": "lora", "row": "naive", "tokens_per_second": 100.0},
        {"method": "lora", "row": "naive, seed 43", "tokens_per_second": 95.0},
        {"method": "full", "row": "naive", "tokens_per_second": 200.0},
        {"method": "full", "row": "naive, seed 43", "tokens_per_second": 202.0},
        {"method": "qlora", "row": "naive, seed 43", "error": "out of memory"},
    ]}
    assert seed_noise(run) == pytest.approx(0.05)
    assert seed_noise({"rows": []}) is None


def test_same_machine_needs_the_profile_and_the_kind_of_device():
    run = {"profile": "tiny", "hardware": "cpu (2 cores, 23.5 GiB RAM), fp32"}
    assert same_machine(run, {"profile": "tiny", "device": "cpu (16 cores), fp32"})
    assert not same_machine(run, {"profile": "llama-3.2-1b-random", "device": "cpu (2 cores), fp32"})
    assert not same_machine(run, {"profile": "tiny", "device": "cuda NVIDIA H200, bf16"})


def test_course_speeds_take_the_row_with_todays_qlora_recipe():
    knobs = {"gradient_checkpointing": False, "upcast": True}
    run = {"rows": [
        {"method": "lora", "row": "course", "knobs": knobs, "tokens_per_second": 40.0},
        {"method": "qlora", "row": "course", "knobs": knobs, "tokens_per_second": 17.0},
        {"method": "qlora", "row": "course, embedding and norms in bf16", "knobs": {**knobs, "upcast": False},
         "tokens_per_second": 34.0},
    ]}
    assert course_speeds(run) == {"lora": 40.0, "qlora": 34.0}
    # no such row: the course row
    assert course_speeds({"rows": run["rows"][:2]}) == {"lora": 40.0, "qlora": 17.0}
    low_memory = {
        "method": "full",
        "row": "course, low-memory plan",
        "knobs": knobs,
        "tokens_per_second": 9.0,
    }
    # notebook 1's other plan
    assert course_speeds({"rows": [*run["rows"], low_memory]})["full, 8-bit"] == 9.0


def _runs(accuracies: list[float], questions: int = 300, seed: int = 0) -> list[dict[str, int]]:
    """Made-up runs: each seed right on exactly its accuracy's share of the questions, picked at random."""
    import random

    rng = random.Random(seed)
    right = [set(rng.sample(range(questions), round(acc * questions))) for acc in accuracies]
    return [{f"q{i}": int(i in run) for i in range(questions)} for run in right]


def test_mcnemar_on_one_seed_pair_can_differ_where_the_runs_do_not():
    """One lucky run beats the other method's run on the same questions; over three seeds they overlap."""
    first = _runs([0.92, 0.66, 0.80], 1000, seed=1)  # one method whose runs vary a lot between seeds
    second = _runs([0.76, 0.74, 0.75], 1000, seed=2)
    one_pair = mcnemar_exact(*paired(first[0], second[0]))
    assert differs(one_pair)  # the first seed against the first seed: "significant"
    # the questions alone, each averaged over the runs, also "find" the first method better ...
    averaged = [{q: sum(run[q] for run in runs) / 3 for q in runs[0]} for runs in (first, second)]
    assert differs(paired_difference(*paired(*averaged)))
    # ... but the runs vary more than that: over seeds and questions, not shown different
    over_seeds = across_seeds(first, second)
    assert over_seeds["low"] < 0 < over_seeds["high"] and not differs(over_seeds)
    assert over_seeds["runs"] == (3, 3) and over_seeds["n"] == 1000


def test_across_seeds_finds_a_difference_that_holds_in_every_run():
    first, second = _runs([0.70, 0.72, 0.71], seed=3), _runs([0.85, 0.86, 0.84], seed=4)
    test = across_seeds(first, second)
    assert 0.10 < test["mean"] < 0.18 and test["low"] > 0 and differs(test)
    assert across_seeds(first, second, seed=1)["low"] == pytest.approx(test["low"], abs=0.01)  # stable draws
    with pytest.raises(ValueError, match="two or more runs"):
        across_seeds(first[:1], second)


def test_holm_adjusts_the_smallest_p_most():
    result = holm({"a-b": 0.01, "a-c": 0.04, "b-c": 0.30})
    assert result["a-b"] == (pytest.approx(0.03), True)  # 3 x 0.01
    assert result["a-c"] == (pytest.approx(0.08), False)  # 2 x 0.04: alone it would pass
    assert result["b-c"] == (pytest.approx(0.30), False)
    assert holm({"x": 0.2, "y": 0.01})["x"][0] == pytest.approx(0.2)  # never below an earlier adjusted p


@pytest.mark.parametrize(
    ("rate", "n", "expected"),
    [
        (0.08, 100, (0.0411, 0.1500)),
        (0.0, 10, (0.0, 0.2775)),
        (1.0, 10, (0.7225, 1.0)),
        (0.5, 300, (0.4437, 0.5563)),
    ],
)
def test_wilson_interval_matches_published_values(rate, n, expected):
    low, high = wilson_interval(rate, n)
    assert (low, high) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="at least one example"):
        wilson_interval(0.5, 0)
