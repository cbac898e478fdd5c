"""Each method's learning rate tuned on validation loss, then more seeds at the pick: notebook 4's runs.

    make study    # -> results/study.json; rerun it to resume where it stopped
    # a few examples per run: checks the plumbing
    python scripts/study.py --smoke --out /tmp/study.json --methods lora

The tiny profile on the CPU, at the notebooks' budget and recipe (helpers/recipe.py: the same model
loading, LoRA and 4-bit configs and SFTConfig as notebooks 1 to 3, and their batches of similar length).
For each method:
1. a half-decade grid of learning rates at the notebooks' seed, widened one step at a time while the
   validation loss at an edge is within 5% of the lowest, so that the loss clearly turns up on both
   sides of the pick;
2. the pick: the rate with the lowest validation loss (the test set never takes part in choosing);
3. more seeds at the pick (a seed changes the data order and the adapters' initialisation).
Each run records its per-example validation losses and test scores and its per-paragraph general-text losses,
so that methods can be compared over seeds and questions (helpers/stats.py). The file is rewritten after every
run; runs with the same settings already in it are kept, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from trl import SFTTrainer

from helpers import ROOT
from helpers.chat import CHAT_TEMPLATE_KWARGS, load_tokenizer
from helpers.data import (
    batches_of_similar_length,
    example_ids,
    load_general_text,
    load_support,
    to_conversational,
)
from helpers.evaluate import eval_loss, reply_scores, text_loss
from helpers.hardware import detect_hardware
from helpers.install import package_versions
from helpers.models import choose_model
from helpers.recipe import METHODS, adapters_to_float32, load_model, sft_config
from helpers.results import by_id, write_json_atomic
from helpers.study import GRID_SEED, grid_runs, pick, spread

# learning rates in half-decade steps; each method's grid starts at four of them and widens along this ladder
LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FIRST_GRID = {
    "full": (1e-4, 3e-4, 1e-3, 3e-3),
    "lora": (1e-3, 3e-3, 1e-2, 3e-2),
    "qlora": (1e-3, 3e-3, 1e-2, 3e-2),
}
TURN_UP = 0.05  # the grid widens past an edge whose validation loss is within 5% of the lowest
SEEDS = (GRID_SEED, 43, 44)  # the notebooks' seed first: the grid's
BUDGET = {  # the notebooks' budget and evaluation sizes (their parameters cell); --smoke: a few of each
    "train": 2000, "validation": 200, "test": 300, "general_texts": 200, "max_new_tokens": 64,
    "batch": 8, "max_length": 256,
}
SMOKE_BUDGET = {**BUDGET, "train": 16, "validation": 4, "test": 2, "general_texts": 2, "max_new_tokens": 8}


def next_rate(
    runs: list[dict], method: str, first_grid: tuple[float, ...], widen: bool = True
) -> float | None:
    """The next grid rate: the first grid's, then one step past an edge within TURN_UP of the lowest loss."""
    grid = grid_runs(runs, method)
    for rate in first_grid:
        if rate not in grid:
            return rate
    if not widen:
        return None
    # an edge counts as turned up once its loss is clearly above the lowest, not just by noise
    lowest, tried = grid[pick(runs, method)]["eval_loss"], sorted(LADDER.index(rate) for rate in grid)
    if grid[LADDER[tried[0]]]["eval_loss"] < lowest * (1 + TURN_UP) and tried[0] > 0:
        return LADDER[tried[0] - 1]
    if grid[LADDER[tried[-1]]]["eval_loss"] < lowest * (1 + TURN_UP) and tried[-1] < len(LADDER) - 1:
        return LADDER[tried[-1] + 1]
    return None


def baseline(method: str, path: str, tokenizer, dataset, general: list[str]) -> dict:
    """The untrained model's validation loss and general-text losses (QLoRA's base is the 4-bit one)."""
    model = load_model(
        method, path, detect_hardware().precision.torch_dtype, "cpu", SEEDS[0], tokenizer=tokenizer
    )
    return {
        "eval_loss": eval_loss(model, tokenizer, dataset["validation"])["eval_loss"],
        "general_per_text": text_loss(model, tokenizer, general)["per_text"],
    }


def train_and_measure(method: str, rate: float, seed: int, path: str, tokenizer, dataset, general: list[str],
                      budget: dict) -> dict:
    """Train one method at one learning rate and seed as the notebooks do; its per-example measures."""
    hardware = detect_hardware()
    model = load_model(method, path, hardware.precision.torch_dtype, "cpu", seed, tokenizer=tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    train_data = batches_of_similar_length(dataset["train"], tokenizer, budget["batch"], seed)
    with tempfile.TemporaryDirectory(prefix="study-") as folder:
        args = sft_config(method, "tiny", hardware, output_dir=folder, batch=budget["batch"],
                          max_length=budget["max_length"], seed=seed, learning_rate=rate,
                          save_strategy="no", disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_data, processing_class=tokenizer)
        if method == "qlora":  # as notebook 3: float32 adapters
            adapters_to_float32(trainer.model)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    loss = eval_loss(model, tokenizer, dataset["validation"])
    scores, _ = reply_scores(model, tokenizer, dataset["test"], budget["max_new_tokens"])
    return {
        "method": method,
        "learning_rate": rate,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "eval_loss": loss["eval_loss"],
        "val_losses": by_id(example_ids(dataset["validation"]), loss["per_example"]),
        "accuracy": scores["accuracy"],
        "test_scores": by_id(example_ids(dataset["test"]), scores["per_reply"]),
        "general_per_text": text_loss(model, tokenizer, general)["per_text"],
    }


README_BLOCK = re.compile(r"(<!-- study table -->\n).*?(<!-- end of study table -->)", re.S)


def markdown_table(study: dict) -> str:
    """README's summary of a study: per method its validation curve, pick and seed spread; the wall time."""
    lines = [
        "| method | validation loss by learning rate (grid seed) | pick "
        "| accuracy at the pick, mean (range) over seeds | forgetting at the pick |",
        "|---|---|---|---|---|",
    ]
    for method in study["picks"]:
        curve = ", ".join(
            f"{rate:g}: {run['eval_loss']:.3f}"
            for rate, run in sorted(grid_runs(study["runs"], method).items())
        )
        measured = spread(study, method)
        acc, forgot = measured["accuracy"], measured["forgetting"]
        lines.append(
            f"| {method} | {curve} | {study['picks'][method]:g} | {acc['mean']:.1%} ({acc['low']:.1%} to "
            f"{acc['high']:.1%}, {acc['seeds']} seeds) | {forgot['mean']:+.3f} nats |"
        )
    lines.append(f"\n`{study['command']}` at {study['commit']}: {len(study['runs'])} runs in "
                 f"{study['wall_seconds'] / 60:.0f} min on {study['machine']}.")
    return "\n".join(lines) + "\n"


def readme_block(text: str, study: dict) -> str:
    """The README with its study block printed again from the study."""
    return README_BLOCK.sub(lambda match: match[1] + markdown_table(study) + match[2], text)


def commit() -> str:
    """The checked-out commit, and '+changes' when the tree differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return head.strip() + (" +changes" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "study.json")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--seeds", type=int, default=len(SEEDS), help=f"seeds at each pick, at most {len(SEEDS)}"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few examples per run and a two-rate grid, never widened"
    )
    parser.add_argument("--readme", action="store_true", help="print README's study table again from --out")
    args = parser.parse_args(argv)
    if args.readme:
        readme = ROOT / "README.md"
        readme.write_text(readme_block(readme.read_text(encoding="utf-8"), json.loads(args.out.read_text())))
        return
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, once per run
    budget = SMOKE_BUDGET if args.smoke else BUDGET
    first_grid = {m: grid[1:3] for m, grid in FIRST_GRID.items()} if args.smoke else FIRST_GRID
    seeds = SEEDS[: args.seeds]

    study = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    if study.get("budget") != budget:  # other settings: start afresh
        study = {"budget": budget, "runs": [], "baselines": {}, "wall_seconds": 0.0}
    runs, started = study["runs"], time.perf_counter()
    choice = choose_model("tiny", None, None)
    path = choice.path
    tokenizer = load_tokenizer(path)
    sizes = {split: budget[split] for split in ("train", "validation", "test")}
    dataset = to_conversational(load_support(sizes), chat_template_kwargs=CHAT_TEMPLATE_KWARGS)
    general, source = load_general_text("tiny", budget["general_texts"])

    def save(**extra: object) -> None:
        study.update(
            command="make study" if args.out == ROOT / "results" / "study.json" else "scripts/study.py",
            commit=commit(),
            profile="tiny",
            model=choice.description,
            machine=detect_hardware().describe(),
            versions=package_versions(),
            general_text=source,
            seeds=list(seeds),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        )
        study["wall_seconds"] = round(study["wall_seconds"] + time.perf_counter() - started, 1)
        write_json_atomic(args.out, study)

    def todo() -> tuple[str, float, int] | None:
        for method in args.methods:
            rate = next_rate(runs, method, first_grid[method], widen=not args.smoke)
            if rate is not None:
                return method, rate, SEEDS[0]
        for method in args.methods:
            for seed in seeds[1:]:
                if not any(r["method"] == method and r["seed"] == seed for r in runs):
                    return method, pick(runs, method), seed
        return None

    times = [r["run_seconds"] for r in runs]
    times_before = list(times)
    while (job := todo()) is not None:
        method, rate, seed = job
        if method not in study["baselines"]:
            print(f"{method}: the untrained model's losses", flush=True)
            study["baselines"][method] = baseline(method, path, tokenizer, dataset, general)
        left = sum(max(0, len(first_grid[m]) + len(seeds) - 1 - sum(r["method"] == m for r in runs))
                   for m in args.methods)
        eta = f", about {left * sum(times) / len(times) / 60:.0f} min left" if times else ""
        print(
            f"[run {len(runs) + 1}, at least {left} to go{eta}] "
            f"{method} at learning rate {rate:g}, seed {seed}",
            flush=True,
        )
        run_start = time.perf_counter()
        run = train_and_measure(method, rate, seed, path, tokenizer, dataset, general, budget)
        run["run_seconds"] = round(time.perf_counter() - run_start, 1)  # training and evaluation
        runs.append(run)
        times.append(run["run_seconds"])
        print(f"    validation loss {run['eval_loss']:.3f}, test accuracy {run['accuracy']:.1%}, "
              f"trained in {run['train_seconds']:.0f} s", flush=True)
        save()
        started = time.perf_counter()
        gc.collect()
    picks = {method: pick(runs, method) for method in args.methods}
    # a study with nothing new keeps its stamp
    if len(runs) > len(times_before) or study.get("picks") != picks:
        save(picks=picks)
    for method in args.methods:
        curve = ", ".join(
            f"{rate:g}: {run['eval_loss']:.3f}" for rate, run in sorted(grid_runs(runs, method).items())
        )
        print(f"{method}: picked {study['picks'][method]:g} (validation loss by rate: {curve})")
    print(f"{len(runs)} runs in {study['wall_seconds'] / 60:.1f} min -> {args.out.name}")


if __name__ == "__main__":
    main()
