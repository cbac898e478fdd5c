"""Reading the three results files together, saying plainly what is missing, stale or not comparable."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers.memory import format_bytes
from helpers.results import load_results, notebook_fingerprint
from helpers.scoring import TASK_ACCURACY
from helpers.stats import wilson_interval

# Which notebook writes which results file.
NOTEBOOK_OF = {"full": "01_full_finetuning.ipynb", "lora": "02_lora.ipynb", "qlora": "03_qlora.ipynb"}


def load_all(results_dir: Path, notebooks_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """Load every results file there is; return them and a list of problems, each saying how to fix it."""
    found, problems = {}, []
    for method, notebook in NOTEBOOK_OF.items():
        path = results_dir / f"{method}.json"
        try:
            found[method] = load_results(path, produced_by=f"notebooks/{notebook} (or `make course`)")
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"{method}: {error}")
            continue
        current = notebook_fingerprint(notebooks_dir / notebook)
        if found[method].get("notebook_fingerprint") != current:
            problems.append(
                f"{method}: stale: notebooks/{notebook} has changed since {path.name} was written "
                f"({found[method]['created_at']}). Rerun that notebook (or `make course`)."
            )
    for what, value_of in (
        ("profiles", lambda r: r["profile"]),
        ("hardware", lambda r: r["device"]),
        ("metrics", metric_of),  # task accuracy on the support data, chrF on other data
    ):
        values = {method: value_of(r) for method, r in found.items()}
        if len(set(values.values())) > 1:
            listed = "; ".join(f"{m}: {v}" for m, v in values.items())
            problems.append(
                f"The results come from different {what} ({listed}): their numbers are not comparable. "
                f"Rerun the three notebooks with the same COURSE_PROFILE and DATA on the same machine."
            )
    return found, problems


def metric_of(result: dict) -> str:
    """What a results file's accuracy_before/after measure: "task accuracy" (also when unsaid) or "chrF"."""
    return result.get("metric", TASK_ACCURACY)


def train_memory(result: dict) -> dict:
    """The training phase's memory record of a results file (measured peak, breakdown, estimate)."""
    return result["peak_memory"].get("train", {})


def comparison_rows(found: dict[str, dict]) -> dict[str, dict[str, str]]:
    """The comparison table as {row: {method: text}}, the same in the notebook and after `make course`."""
    rows: dict[str, dict[str, str]] = {}
    for method, r in found.items():
        memory = train_memory(r)
        breakdown, estimate = memory.get("breakdown", {}), memory.get("estimate", {})
        column = {
            "profile": r["profile"],
            "trainable parameters": (
                f"{r['trainable_params']:,} ({r['trainable_params'] / r['total_params']:.2%})"
            ),
            "total parameters": f"{r['total_params']:,}",
            "training memory, tensors:": "",
        }
        for part in ("weights", "gradients", "optimizer_states"):
            column[f"  {part.replace('_', ' ')}"] = (
                format_bytes(breakdown[part]) if part in breakdown else "n/a"
            )
        column["  activations (estimated)"] = format_bytes(estimate["activations"]) if estimate else "n/a"
        on_cpu = not memory.get("measured", "").startswith("cuda")
        peak_row = "peak memory, training" + (" (process: mostly Python and libraries)" if on_cpu else "")
        column[peak_row] = format_bytes(memory["peak_bytes"]) if "peak_bytes" in memory else "n/a"
        column["  measured as"] = memory.get("measured", "n/a")
        if "peak_reserved_bytes" in memory:
            column["  reserved (CUDA)"] = format_bytes(memory["peak_reserved_bytes"])
        column.update(
            {
                "train tokens/s": f"{r['train_tokens_per_second']:,.0f}",
                "train time": f"{r['train_seconds']:.0f} s",
                "eval loss": f"{r['eval_loss']:.3f}",
                "perplexity": f"{r['perplexity']:.2f}",
            }
        )
        if metric_of(r) == TASK_ACCURACY:
            column["accuracy before -> after"] = f"{r['accuracy_before']:.1%} -> {r['accuracy_after']:.1%}"
            if "test_examples" in r:  # results files from before the interval was stored lack the count
                low, high = wilson_interval(r["accuracy_after"], r["test_examples"])
                column["  95% interval after"] = f"{low:.1%} to {high:.1%} (n={r['test_examples']})"
        else:  # chrF: a score from 0 to 100, not a rate, so no Wilson interval
            column[f"{metric_of(r)} before -> after"] = (
                f"{r['accuracy_before']:.1f} -> {r['accuracy_after']:.1f}"
            )
        column["artifact on disk"] = format_bytes(r["artifact_bytes"])
        for row, text in column.items():
            rows.setdefault(row, {})[method] = text
    return rows


def format_rows(rows: dict[str, dict[str, str]]) -> str:
    """The table as plain text, one column per method."""
    methods = list(next(iter(rows.values())).keys()) if rows else []
    width = max((len(row) for row in rows), default=0)
    cells = [max([len(m)] + [len(rows[row].get(m, "")) for row in rows]) for m in methods]
    lines = [" " * width + "  " + "  ".join(m.rjust(w) for m, w in zip(methods, cells, strict=True))]
    for row, values in rows.items():
        lines.append(
            row.ljust(width)
            + "  "
            + "  ".join(values.get(m, "").rjust(w) for m, w in zip(methods, cells, strict=True))
        )
    return "\n".join(lines)


# The peak that Unsloth's Llama 3.2 1B QLoRA notebook publishes (A10G, batch 1 x 8, up to 2,048 tokens).
_UNSLOTH_PEAK_RESERVED = "2.16 GiB on an A10G"


def benchmark_rows(run: dict) -> list[dict]:
    """A scripts/benchmark.py run as table rows: speed against the method's naive row; no empty columns."""
    naive = {r["method"]: r for r in run["rows"] if r["row"] == "naive" and "error" not in r}
    rows = []
    for r in run["rows"]:
        if "error" in r:
            rows.append(
                {
                    "method": r["method"],
                    "row": r["row"],
                    "tokens/s": "failed: " + r["error"].splitlines()[-1][:80],
                }
            )
            continue
        base = naive.get(r["method"])
        memory = r["peak_memory"]
        rows.append(
            {
                "method": r["method"],
                "row": r["row"],
                "tokens/s": f"{r['tokens_per_second']:,.0f}",
                "x naive": f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x" if base else "n/a",
                "padding": f"{r['padding_share']:.1%}",
                "peak memory": format_bytes(memory["peak_bytes"]),
                "reserved (CUDA)": (
                    format_bytes(memory["peak_reserved_bytes"]) if "peak_reserved_bytes" in memory else ""
                ),
                "estimate": format_bytes(r["estimate"]["total"]) if r.get("estimate") else "",
                "peak / estimate": (
                    f"{memory['peak_bytes'] / r['estimate']['total']:.2f}" if r.get("estimate") else ""
                ),
                "train loss": f"{r['train_loss']:.3f}",
                "eval loss": f"{r['eval_loss']:.3f}",
            }
        )
    empty = [key for key in rows[0] if all(row.get(key, "") == "" for row in rows)] if rows else []
    # drop the columns no row fills (e.g. CUDA's on a CPU)
    return [{key: value for key, value in row.items() if key not in empty} for row in rows]


def benchmark_findings(run: dict) -> list[str]:
    """Per method, the course recipe against naive in one line, with a second seed's spread as the noise."""
    by_row = {(r["method"], r["row"]): r for r in run["rows"] if "error" not in r}
    lines = []
    for method in dict.fromkeys(r["method"] for r in run["rows"]):
        naive, course = by_row.get((method, "naive")), _todays_course(run, method)
        if not (naive and course):
            continue
        peaks = [format_bytes(r["peak_memory"]["peak_bytes"]) for r in (naive, course)]
        line = (
            f"{method}: {course['row']} {course['tokens_per_second'] / naive['tokens_per_second']:.2f}x "
            f"naive's real tokens/s, peak memory {peaks[0]} -> {peaks[1]}, "
            f"padding {naive['padding_share']:.1%} -> {course['padding_share']:.1%}, "
            f"eval loss {naive['eval_loss']:.3f} -> {course['eval_loss']:.3f}"
        )
        seed = by_row.get((method, "naive, seed 43"))
        if seed:
            line += (
                "; naive with another seed: speed "
                f"{seed['tokens_per_second'] / naive['tokens_per_second'] - 1:+.0%}, "
                f"eval loss {seed['eval_loss'] - naive['eval_loss']:+.3f}"
            )
        lines.append(line)
    estimated = [r for r in by_row.values() if r.get("estimate")]
    if estimated:
        ratios = [r["peak_memory"]["peak_bytes"] / r["estimate"]["total"] for r in estimated]
        lines.append(
            f"memory: measured peaks {min(ratios):.2f}x to {max(ratios):.2f}x notebook 1's estimate over "
            f"{len(ratios)} rows; naive and course rows: "
            + ", ".join(
                f"{r['method']} {r['row']} {r['peak_memory']['peak_bytes'] / r['estimate']['total']:.2f}x"
                for r in estimated
                if r["row"] in ("naive", "course")
            )
        )
    for r in by_row.values():
        if r["row"].startswith("unsloth settings") and "peak_reserved_bytes" in r["peak_memory"]:
            lines.append(
                f"{r['method']} at {r['row']}: peak reserved "
                f"{format_bytes(r['peak_memory']['peak_reserved_bytes'])}, "
                f"{r['tokens_per_second']:,.0f} tokens/s (Unsloth's Llama 3.2 1B notebook: "
                f"{_UNSLOTH_PEAK_RESERVED}, on its own data and kernels)"
            )
    return lines


def same_machine(run: dict, result: dict) -> bool:
    """Whether a benchmark run and a results file come from the same profile and kind of device."""
    return run["profile"] == result["profile"] and run["hardware"].split()[0] == result["device"].split()[0]


def seed_noise(run: dict) -> float | None:
    """The largest speed change a second seed alone gave in a run (|naive, seed 43 / naive - 1|), or None."""
    by_row = {(r["method"], r["row"]): r for r in run["rows"] if "error" not in r}
    gaps = [
        abs(by_row[m, "naive, seed 43"]["tokens_per_second"] / by_row[m, "naive"]["tokens_per_second"] - 1)
        for m, row in by_row
        if row == "naive, seed 43" and (m, "naive") in by_row
    ]
    return max(gaps) if gaps else None


def recommend(
    options: dict[str, dict], better: set[tuple[str, str]], speed_noise: float
) -> tuple[str | None, str]:
    """The method to use on one GPU, and why.

    options: per method, {"fits": bool, "need_bytes": int, "tokens_per_second": float or None}.
    better: (winner, loser) pairs that a paired test found different. Of the methods that fit, those that no
    other fitting method beat are kept; of these, the fastest (speeds within speed_noise of the fastest tie,
    and so does an unmeasured speed), and of those the one that needs the least memory.
    """
    fitting = [m for m, o in options.items() if o["fits"]]
    if not fitting:
        return None, "nothing fits"
    kept = [m for m in fitting if not any((other, m) in better for other in fitting)]
    why = [f"fits: {', '.join(fitting)}"]
    if len(kept) < len(fitting):
        beaten = ", ".join(m for m in fitting if m not in kept)
        why.append(f"less accurate than another that fits, by the test: {beaten}")
    speeds = [options[m]["tokens_per_second"] for m in kept if options[m]["tokens_per_second"]]
    fastest = max(speeds, default=None)
    pool = kept
    if fastest and len(kept) > 1:  # an unmeasured speed ties: it cannot be shown slower
        kept = [
            m for m in kept if (options[m]["tokens_per_second"] or fastest) >= fastest * (1 - speed_noise)
        ]
    choice = min(kept, key=lambda m: options[m]["need_bytes"])
    if len(kept) > 1:
        ties = ", ".join(m for m in kept if m != choice)
        why.append(f"ties with {ties} (on speed, or speed unmeasured), needs less memory")
    elif len(pool) > 1:
        why.append(f"fastest of {', '.join(pool)}")
    return choice, "; ".join(why)


def _todays_course(run: dict, method: str) -> dict | None:
    """A method's "course" row; for QLoRA, the same knobs without the float32 upcast (today's) if measured."""
    done = [r for r in run["rows"] if "error" not in r and r["method"] == method]
    course = next((r for r in done if r["row"] == "course"), None)
    if course is None:
        return None
    today = {**course["knobs"], "upcast": False} if method == "qlora" else course["knobs"]
    return next((r for r in done if r["knobs"] == today), course)


def course_speeds(run: dict) -> dict[str, float]:
    """Per plan ("full", "full, 8-bit", "lora", "qlora"), tokens/s of the benchmark row with today's recipe.

    Runs from before the course kept QLoRA's embedding and norms in the compute dtype have an upcast "course"
    row; where such a run also measured the same knobs without the upcast, that row is today's recipe.
    "full, 8-bit" is notebook 1's low-memory plan: its own row, or no speed where the run did not measure it.
    """
    done = [r for r in run["rows"] if "error" not in r]
    speeds = {}
    for method in dict.fromkeys(r["method"] for r in done):
        course = _todays_course(run, method)
        if course:
            speeds[method] = course["tokens_per_second"]
    for r in done:
        if (r["method"], r["row"]) == ("full", "course, low-memory plan"):
            speeds["full, 8-bit"] = r["tokens_per_second"]
    return speeds


def benchmark_runs(path: Path) -> dict[str, dict]:
    """The runs of results/benchmark.json (`make bench`), less smoke runs; {} where there is no such file."""
    runs = json.loads(Path(path).read_text(encoding="utf-8"))["runs"] if Path(path).exists() else {}
    return {key: run for key, run in runs.items() if not key.endswith("(smoke)")}


def accuracy_wins(tests: dict[tuple[str, str], dict]) -> set[tuple[str, str]]:
    """(winner, loser) for each accuracy test of second - first that found a difference (helpers.study)."""
    return {((b, a) if test["mean"] > 0 else (a, b)) for (a, b), test in tests.items() if test["differs"]}


def measured_on_llama_3_2_1b(profile: str, model: str) -> bool:
    """Whether a profile and model are Llama 3.2 1B's own weights (not a stand-in, not random weights)."""
    return profile == "hub" and "llama-3.2-1b" in model.lower()


def gpu_measurements(gpu_dir: Path) -> list[dict]:
    """The committed GPU runs (results/gpu/<gpu>/<regime>/<method>.json), each labelled with how it ran."""
    found = []
    for path in sorted(Path(gpu_dir).glob("*/*/*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "method" not in result:  # the check's own log (check-*.json)
            continue
        gpu, regime, config = path.parts[-3], path.parts[-2], result["config"]
        # the run's own settings: the smoke budget's few examples, batched as its notebook batches them
        per_step = min(config["plan"]["micro_batch"] if "plan" in config else 8, config["train_examples"])
        settings = f"{per_step} of {config['train_examples']} smoke examples per step"
        plan_name = config["plan"]["name"] if "plan" in config else config.get("memory_plan", {}).get("name")
        if plan_name:
            settings = f"{plan_name} plan, {settings}"
        # QLoRA runs that record no embedding_dtype, from before the recipe kept the embedding and norms in
        # the compute dtype, kept PEFT's float32 ones (today's recipe needs less)
        if result["method"] == "qlora" and "embedding_dtype" not in config:
            settings += "; PEFT's float32 embedding and norms"
        memory = train_memory(result)
        found.append({
            "gpu": gpu, "regime": regime, "method": result["method"], "plan_name": plan_name, "path": path,
            "peak_bytes": memory["peak_bytes"], "peak_reserved_bytes": memory["peak_reserved_bytes"],
            "label": f"measured on {gpu}, {regime} regime ({settings})", "result": result,
        })
    return found


def gpu_name(gpu: str) -> str:
    """The chip of a GPU heading: "T4" for "T4 16 GB", "RTX 4090" for "RTX 4090 24 GB"."""
    return gpu.rsplit(" ", 2)[0]


def speed_run_on(bench_runs: dict[str, dict], gpu: str) -> dict | None:
    """The first benchmark run measured on this GPU heading's chip (a CUDA run that names it), or None."""
    chip = re.compile(rf"\b{re.escape(gpu_name(gpu))}\b")
    for run in bench_runs.values():
        device = run["hardware"].split(" (")[0]  # "cuda NVIDIA H200": a memory cap in brackets names no chip
        if device.startswith("cuda") and chip.search(device):
            return run
    return None


def _a(name: str) -> str:
    """The name with its article, as read aloud: "a T4", "an H100", "an RTX 4090"."""
    return f"{'an' if name[0] in 'AEFHILMNORSX' else 'a'} {name}"


def which_method(
    plans: dict[str, dict[str, dict]],
    measurements: list[dict],
    bench_runs: dict[str, dict],
    wins: set[tuple[str, str]],
    *,
    accuracy_profile: str,
    accuracy_model: str,
) -> dict[str, dict]:
    """Per GPU heading: each method's plan, memory and speed, each labelled with its source; and the choice.

    plans: helpers.fit.notebook_plans. measurements: gpu_measurements. bench_runs: benchmark_runs.
    wins: accuracy_wins, measured on accuracy_model in accuracy_profile: they count for Llama 3.2 1B only.
    Memory: the plan's estimate decides; a GPU run of the same plan in the GPU's precision regime (on the GPU
    it names) is shown beside it. Speed: only a benchmark run on that GPU's own chip; else "not measured".
    """
    own = measured_on_llama_3_2_1b(accuracy_profile, accuracy_model)
    if own:
        accuracy = f"the study's tests, measured on {accuracy_model}"
    else:
        accuracy = (f"not measured for Llama 3.2 1B (the study trained the {accuracy_profile} stand-in, "
                    f"{accuracy_model}); the choice rests on memory and speed")
    answer = {}
    for gpu, by_method in plans.items():
        run = speed_run_on(bench_runs, gpu)
        speeds, device = (course_speeds(run), run["hardware"].split(" (")[0]) if run else ({}, None)
        on_gpu = _a(gpu_name(gpu))
        options = {}
        for method, plan in by_method.items():
            # a GPU run of the same plan (full fine-tuning: the same of notebook 1's plans) in the same regime
            same_plan = [f"{format_bytes(m['peak_reserved_bytes'])} peak reserved {m['label']}"
                         for m in measurements if (m["regime"], m["method"]) == (plan["regime"], method)
                         and (method != "full" or m["plan_name"] == plan["plan_name"])]
            # the speed of the plan that fits (notebook 1's low-memory plan has its own benchmark row)
            speed = speeds.get(plan["plan"])
            need, per_step = format_bytes(plan["need_bytes"]), f"{plan['batch']} x {plan['seq_len']} tokens"
            options[method] = {
                "plan": plan["plan"], "fits": plan["fits"], "need_bytes": plan["need_bytes"],
                "tokens_per_second": speed,
                "estimated": f"{plan['source']}: {need} estimated at {per_step} per step",
                "measured": same_plan[0] if same_plan else f"not measured in the {plan['regime']} regime",
                "speed": f"{speed:,.0f} tokens/s on {device}" if speed else f"speed not measured on {on_gpu}",
            }
        noise = (seed_noise(run) or 0.0) if run else 0.0  # how far a second seed alone moved a row's speed
        choice, why = recommend(options, wins if own else set(), noise)
        if run:
            batch, longest = run["course"]["batch"], run["settings"]["max_length"]
            speed_source = (f"measured on {run['hardware']}: the benchmark's course rows, {run['profile']} "
                            f"profile, {batch} examples of up to {longest} tokens per step; "
                            f"seed noise {noise:.0%}")
        else:
            speed_source = f"not measured on {on_gpu}"
        answer[gpu] = {"choice": choice, "why": why, "accuracy": accuracy, "speed": speed_source,
                       "options": options}
    return answer


def which_method_lines(answer: dict[str, dict]) -> list[str]:
    """which_method's answer as lines to print: the sources once, then per GPU the choice and each method."""
    if not answer:
        return []
    lines = [
        f"accuracy: {next(iter(answer.values()))['accuracy']}",
        "memory: each notebook's own plan, estimated at its examples per step; beside it, a GPU run of that "
        "plan in that GPU's precision regime where one is committed",
        "a GPU 'fits' if the estimate is under 90% of its memory minus 0.5 GiB",
    ]
    for gpu, found in answer.items():
        lines += ["", f"{gpu}: {found['choice'] or 'nothing fits at these settings'} ({found['why']})"]
        for method, option in found["options"].items():
            verdict = "fits" if option["fits"] else "does not fit"
            sources = "; ".join(option[key] for key in ("estimated", "measured", "speed"))
            lines.append(f"    {method:6s} {verdict}; {sources}")
        if found["speed"].startswith("measured"):  # else each method's line says it was not measured
            lines.append(f"    speed: {found['speed']}")
    return lines
