"""Notebook 4's "Which method?": figures name their source; full fine-tuning on a T4 is notebook 1's plan."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from helpers.compare import (
    accuracy_wins,
    gpu_measurements,
    measured_on_llama_3_2_1b,
    speed_run_on,
    which_method,
    which_method_lines,
)
from helpers.fit import FULL_PLANS, choose_full_plan, notebook_plans
from helpers.memory import format_bytes

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
GIB = 2**30


def plan(
    method: str, need_gib: float, *, regime: str, plan_name: str, fits: bool = True, batch: int = 8
) -> dict:
    """A made-up entry of helpers.fit.notebook_plans."""
    key = {"plain": "full", "low memory": "full, 8-bit"}.get(plan_name, method)
    return {
        "method": method,
        "plan": key,
        "plan_name": plan_name,
        "regime": regime,
        "fits": fits,
        "need_bytes": int(need_gib * GIB),
        "batch": batch,
        "seq_len": 256,
        "source": f"{method}'s {plan_name} plan",
    }


def plans() -> dict[str, dict[str, dict]]:
    """A T4 (fp16: the t4 regime) where full fine-tuning takes its low-memory plan; an H100 where plain."""
    return {
        "T4 16 GB": {"full": plan("full", 11.0, regime="t4", plan_name="low memory", batch=2),
                     "lora": plan("lora", 6.0, regime="t4", plan_name="no checkpointing"),
                     "qlora": plan("qlora", 5.0, regime="t4", plan_name="no checkpointing")},
        "H100 80 GB": {"full": plan("full", 25.0, regime="native", plan_name="plain"),
                       "lora": plan("lora", 6.0, regime="native", plan_name="no checkpointing"),
                       "qlora": plan("qlora", 5.0, regime="native", plan_name="no checkpointing")},
    }


def bench_run(hardware: str, speeds: dict[str, float]) -> dict:
    """A made-up benchmark run: each method's course row, and a naive row twice (seeds 42, 43) for noise."""
    rows = [{"method": m, "row": "course", "knobs": {}, "tokens_per_second": s} for m, s in speeds.items()]
    rows += [{"method": "lora", "row": "naive", "knobs": {}, "tokens_per_second": 100.0},
             {"method": "lora", "row": "naive, seed 43", "knobs": {}, "tokens_per_second": 98.0}]
    return {"profile": "llama-3.2-1b-random", "hardware": hardware, "rows": rows, "course": {"batch": 8},
            "settings": {"max_length": 2048}}


BENCH = {
    # an H200 standing in for a T4 (fp16, memory capped): it still measured an H200's speed
    "h200": bench_run("cuda NVIDIA H200 (compute 9.0, capped at 15.0 GiB as a T4), fp16",
                      {"full": 1000.0, "lora": 3000.0, "qlora": 2000.0}),
    "cpu": bench_run("cpu (2 cores, 23.5 GiB RAM), fp32", {"full": 10.0, "lora": 30.0, "qlora": 20.0}),
    "h100": bench_run("cuda NVIDIA H100 80GB HBM3 (compute 9.0, 79.2 GiB GPU memory), bf16",
                      {"full": 900.0, "lora": 2500.0, "qlora": 1500.0}),
}


def write_gpu_run(
    gpu_dir: Path, gpu: str, regime: str, method: str, plan_name: str | None, reserved_gib: float
) -> None:
    """A made-up results/gpu/<gpu>/<regime>/<method>.json with the fields gpu_measurements reads."""
    config = {"train_examples": 4}
    if plan_name:
        config["plan"] = {"name": plan_name, "micro_batch": 8 if plan_name == "plain" else 2}
    train = {"peak_bytes": int(reserved_gib * 0.9 * GIB), "peak_reserved_bytes": int(reserved_gib * GIB)}
    path = gpu_dir / gpu / regime / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": method, "config": config, "peak_memory": {"train": train}}))


def answer(tmp_path: Path, wins=frozenset(), profile: str = "tiny", model: str = "tiny stand-in") -> dict:
    """which_method on the made-up plans, GPU runs and benchmark runs."""
    gpu_dir = tmp_path / "gpu"
    write_gpu_run(gpu_dir, "nvidia-l4", "t4", "full", "low memory", 12.5)
    write_gpu_run(gpu_dir, "nvidia-l4", "native", "full", "plain", 24.0)
    write_gpu_run(gpu_dir, "nvidia-l4", "t4", "lora", None, 4.0)
    (gpu_dir / "nvidia-l4" / "t4" / "check-run1.json").write_text("{}")  # the check's log: not a measurement
    return which_method(plans(), gpu_measurements(gpu_dir), BENCH, set(wins), accuracy_profile=profile,
                        accuracy_model=model)


def test_a_t4_heading_never_shows_a_speed_measured_on_another_gpu(tmp_path):
    t4 = answer(tmp_path)["T4 16 GB"]
    for option in t4["options"].values():
        assert option["tokens_per_second"] is None and option["speed"] == "speed not measured on a T4"
    assert t4["speed"] == "not measured on a T4"  # not the H200 run in a T4's regime, nor the CPU run
    assert speed_run_on(BENCH, "T4 16 GB") is None
    assert speed_run_on({"t4": bench_run("cuda Tesla T4 (compute 7.5), fp16", {})}, "T4 16 GB") is not None


def test_a_gpu_heading_shows_its_own_gpus_speeds_labelled_with_the_device(tmp_path):
    h100 = answer(tmp_path)["H100 80 GB"]
    assert h100["options"]["lora"]["tokens_per_second"] == 2500.0
    assert h100["options"]["lora"]["speed"] == "2,500 tokens/s on cuda NVIDIA H100 80GB HBM3"
    assert h100["speed"].startswith("measured on cuda NVIDIA H100") and "seed noise 2%" in h100["speed"]
    assert "8 examples of up to 2048 tokens per step" in h100["speed"]
    assert h100["choice"] == "lora"  # the fastest measured here, beyond the seed noise


def test_a_measured_figure_carries_its_device_regime_and_settings(tmp_path):
    found = answer(tmp_path)
    full_t4 = found["T4 16 GB"]["options"]["full"]
    assert full_t4["measured"] == (
        "12.50 GiB peak reserved measured on nvidia-l4, t4 regime (low memory plan, "
        "2 of 4 smoke examples per step)"
    )
    lora_t4 = found["T4 16 GB"]["options"]["lora"]["measured"]
    assert (
        lora_t4 == "4.00 GiB peak reserved measured on nvidia-l4, t4 regime (4 of 4 smoke examples per step)"
    )
    # the native regime's plain-plan run is H100's full plan; no native LoRA run: not measured, said so
    assert (
        "measured on nvidia-l4, native regime (plain plan"
        in found["H100 80 GB"]["options"]["full"]["measured"]
    )
    assert found["H100 80 GB"]["options"]["lora"]["measured"] == "not measured in the native regime"


def test_a_measurement_of_another_plan_is_not_shown_as_this_plans():
    measured = [{"regime": "t4", "method": "full", "plan_name": "plain", "peak_reserved_bytes": GIB,
                 "label": "measured on nvidia-l4, t4 regime (plain plan, 4 of 4 smoke examples per step)"}]
    found = which_method(plans(), measured, {}, set(), accuracy_profile="tiny", accuracy_model="tiny")
    assert found["T4 16 GB"]["options"]["full"]["measured"] == "not measured in the t4 regime"


def test_an_estimate_carries_its_plan_and_settings(tmp_path):
    found = answer(tmp_path)
    assert found["T4 16 GB"]["options"]["full"]["estimated"] == (
        "full's low memory plan: 11.00 GiB estimated at 2 x 256 tokens per step"
    )
    assert found["H100 80 GB"]["options"]["qlora"]["estimated"].endswith(
        "estimated at 8 x 256 tokens per step"
    )
    lines = which_method_lines(found)
    assert any("estimated at 2 x 256 tokens per step; 12.50 GiB peak reserved measured on nvidia-l4" in line
               for line in lines)


def test_accuracy_wins_from_a_stand_in_are_not_used_for_llama_3_2_1b(tmp_path):
    wins = {("full", "lora"), ("full", "qlora")}  # full more accurate than both, by the test
    stand_in = answer(tmp_path, wins, profile="tiny", model="tiny stand-in")["T4 16 GB"]
    assert stand_in["choice"] == "qlora" and "less accurate" not in stand_in["why"]  # memory decides
    assert stand_in["accuracy"].startswith(
        "not measured for Llama 3.2 1B (the study trained the tiny stand-in"
    )
    random = answer(
        tmp_path, wins, profile="llama-3.2-1b-random", model="Llama-3.2-1B shapes, random weights"
    )
    assert random["T4 16 GB"]["choice"] == "qlora"  # Llama 3.2 1B's shapes are not its weights
    own = answer(tmp_path, wins, profile="hub", model="meta-llama/Llama-3.2-1B-Instruct")["T4 16 GB"]
    assert own["choice"] == "full" and "less accurate than another that fits" in own["why"]
    assert own["accuracy"] == "the study's tests, measured on meta-llama/Llama-3.2-1B-Instruct"


def test_accuracy_wins_name_the_winner_of_each_pair_the_test_told_apart():
    tests = {("full", "lora"): {"mean": -0.05, "differs": True},  # lora - full < 0: full more accurate
             ("full", "qlora"): {"mean": 0.04, "differs": True},  # qlora more accurate
             ("lora", "qlora"): {"mean": 0.01, "differs": False}}
    assert accuracy_wins(tests) == {("full", "lora"), ("qlora", "full")}
    assert measured_on_llama_3_2_1b("hub", "meta-llama/Llama-3.2-1B-Instruct")
    assert not measured_on_llama_3_2_1b("hub", "Qwen/Qwen2.5-0.5B-Instruct")


def notebook_1_plans() -> list[dict]:
    """The plans notebook 1's section 5 writes out: its `plans = [...]` literal and the plan it appends."""
    cells = json.loads((NOTEBOOKS / "01_full_finetuning.ipynb").read_text(encoding="utf-8"))["cells"]
    [source] = [
        "".join(c["source"])
        for c in cells
        if c["cell_type"] == "code" and "plans = [" in "".join(c["source"])
    ]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["plans"]:
            found = ast.literal_eval(node.value) + found
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "append":
            found.append(ast.literal_eval(node.args[0]))
    return found


def test_the_full_fine_tuning_t4_plan_is_notebook_1s():
    assert notebook_1_plans() == FULL_PLANS
    own = choose_full_plan(notebook_1_plans(), "T4 16 GB", seq_len=256, longest_reply=61)
    assert [(t["name"], t["fits"]) for t in own["tried"]] == [("plain", False), ("low memory", True)]
    # notebook 1's plan on a T4
    assert own["plan_name"] == "low memory" and format_bytes(own["need_bytes"]) == "11.86 GiB"
    full = notebook_plans(["T4 16 GB"], seq_len=256, longest_reply=61)["T4 16 GB"]["full"]
    assert (full["plan_name"], full["need_bytes"], full["batch"]) == ("low memory", own["need_bytes"], 2)
    cells = {
        name: [
            "".join(c["source"])
            for c in json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"
        ]
        for name in ("01_full_finetuning.ipynb", "04_compare.ipynb")
    }
    assert any('choose_full_plan(plans, "T4 16 GB"' in c for c in cells["01_full_finetuning.ipynb"])
    assert any("choose_full_plan(FULL_PLANS, T4" in c for c in cells["04_compare.ipynb"])
    assert any("notebook_plans(" in c and "which_method(" in c for c in cells["04_compare.ipynb"])
