"""Reading the three results files together, saying plainly what is missing, stale or not comparable."""

from __future__ import annotations

from pathlib import Path

from helpers.evaluate import wilson_interval
from helpers.memory import format_bytes
from helpers.results import load_results, notebook_fingerprint
from helpers.scoring import TASK_ACCURACY

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
    """The comparison table as {row: {method: text}}, the same in the notebook and at the end of `make course`."""
    rows: dict[str, dict[str, str]] = {}
    for method, r in found.items():
        memory = train_memory(r)
        breakdown, estimate = memory.get("breakdown", {}), memory.get("estimate", {})
        column = {
            "profile": r["profile"],
            "trainable parameters": f"{r['trainable_params']:,} ({r['trainable_params'] / r['total_params']:.2%})",
            "total parameters": f"{r['total_params']:,}",
            "training memory, tensors:": "",
        }
        for part in ("weights", "gradients", "optimizer_states"):
            column[f"  {part.replace('_', ' ')}"] = format_bytes(breakdown[part]) if part in breakdown else "n/a"
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
            column[f"{metric_of(r)} before -> after"] = f"{r['accuracy_before']:.1f} -> {r['accuracy_after']:.1f}"
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
        lines.append(row.ljust(width) + "  " + "  ".join(values.get(m, "").rjust(w) for m, w in zip(methods, cells, strict=True)))
    return "\n".join(lines)


# performance-anchors.md row 27: Unsloth's Llama 3.2 1B QLoRA notebook (A10G, batch 1 x 8, up to 2,048 tokens)
_UNSLOTH_PEAK_RESERVED = "2.16 GiB on an A10G"


def benchmark_rows(run: dict) -> list[dict]:
    """One run of scripts/benchmark.py as table rows: each row's speed against its method's naive row; no empty columns."""
    naive = {r["method"]: r for r in run["rows"] if r["row"] == "naive" and "error" not in r}
    rows = []
    for r in run["rows"]:
        if "error" in r:
            rows.append({"method": r["method"], "row": r["row"], "tokens/s": "failed: " + r["error"].splitlines()[-1][:80]})
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
                "reserved (CUDA)": format_bytes(memory["peak_reserved_bytes"]) if "peak_reserved_bytes" in memory else "",
                "estimate": format_bytes(r["estimate"]["total"]) if r.get("estimate") else "",
                "peak / estimate": f"{memory['peak_bytes'] / r['estimate']['total']:.2f}" if r.get("estimate") else "",
                "train loss": f"{r['train_loss']:.3f}",
                "eval loss": f"{r['eval_loss']:.3f}",
            }
        )
    empty = [key for key in rows[0] if all(row.get(key, "") == "" for row in rows)] if rows else []
    return [{key: value for key, value in row.items() if key not in empty} for row in rows]  # e.g. CUDA's on a CPU


def benchmark_findings(run: dict) -> list[str]:
    """Per method, the course recipe against naive in one line, with the spread a second seed gives as the noise."""
    by_row = {(r["method"], r["row"]): r for r in run["rows"] if "error" not in r}
    lines = []
    for method in dict.fromkeys(r["method"] for r in run["rows"]):
        naive, course = by_row.get((method, "naive")), _todays_course(run, method)
        if not (naive and course):
            continue
        peaks = [format_bytes(r["peak_memory"]["peak_bytes"]) for r in (naive, course)]
        line = (
            f"{method}: {course['row']} {course['tokens_per_second'] / naive['tokens_per_second']:.2f}x naive's real tokens/s, "
            f"peak memory {peaks[0]} -> {peaks[1]}, padding {naive['padding_share']:.1%} -> {course['padding_share']:.1%}, "
            f"eval loss {naive['eval_loss']:.3f} -> {course['eval_loss']:.3f}"
        )
        seed = by_row.get((method, "naive, seed 43"))
        if seed:
            line += (
                f"; naive with another seed: speed {seed['tokens_per_second'] / naive['tokens_per_second'] - 1:+.0%}, "
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
                f"{r['method']} at {r['row']}: peak reserved {format_bytes(r['peak_memory']['peak_reserved_bytes'])}, "
                f"{r['tokens_per_second']:,.0f} tokens/s (Unsloth's Llama 3.2 1B notebook: {_UNSLOTH_PEAK_RESERVED}, "
                "on its own data and kernels)"
            )
    return lines


def same_machine(run: dict, result: dict) -> bool:
    """Whether a benchmark run and a results file come from the same profile and kind of device."""
    return run["profile"] == result["profile"] and run["hardware"].split()[0] == result["device"].split()[0]


def seed_noise(run: dict) -> float | None:
    """The largest speed change a second seed alone gave in a benchmark run (|naive, seed 43 / naive - 1|), or None."""
    by_row = {(r["method"], r["row"]): r for r in run["rows"] if "error" not in r}
    gaps = [
        abs(by_row[m, "naive, seed 43"]["tokens_per_second"] / by_row[m, "naive"]["tokens_per_second"] - 1)
        for m, row in by_row
        if row == "naive, seed 43" and (m, "naive") in by_row
    ]
    return max(gaps) if gaps else None


def recommend(options: dict[str, dict], better: set[tuple[str, str]], speed_noise: float) -> tuple[str | None, str]:
    """The method to use on one GPU, and why.

    options: per method, {"fits": bool, "need_bytes": int, "tokens_per_second": float or None}.
    better: (winner, loser) pairs that a paired test found different. Of the methods that fit, those that no other
    fitting method beat are kept; of these, the fastest (speeds within speed_noise of the fastest tie, and so does
    an unmeasured speed), and of those the one that needs the least memory.
    """
    fitting = [m for m, o in options.items() if o["fits"]]
    if not fitting:
        return None, "nothing fits"
    kept = [m for m in fitting if not any((other, m) in better for other in fitting)]
    why = [f"fits: {', '.join(fitting)}"]
    if len(kept) < len(fitting):
        why.append(f"less accurate than another that fits, by the test: {', '.join(m for m in fitting if m not in kept)}")
    speeds = [options[m]["tokens_per_second"] for m in kept if options[m]["tokens_per_second"]]
    fastest = max(speeds, default=None)
    pool = kept
    if fastest and len(kept) > 1:  # an unmeasured speed ties: it cannot be shown slower
        kept = [m for m in kept if (options[m]["tokens_per_second"] or fastest) >= fastest * (1 - speed_noise)]
    choice = min(kept, key=lambda m: options[m]["need_bytes"])
    if len(kept) > 1:
        why.append(f"ties with {', '.join(m for m in kept if m != choice)} (on speed, or speed unmeasured), needs less memory")
    elif len(pool) > 1:
        why.append(f"fastest of {', '.join(pool)}")
    return choice, "; ".join(why)


def _todays_course(run: dict, method: str) -> dict | None:
    """A method's measured "course" row, or for QLoRA runs from before issue 23 the row with today's knobs if any."""
    done = [r for r in run["rows"] if "error" not in r and r["method"] == method]
    course = next((r for r in done if r["row"] == "course"), None)
    if course is None:
        return None
    today = {**course["knobs"], "upcast": False} if method == "qlora" else course["knobs"]
    return next((r for r in done if r["knobs"] == today), course)


def course_speeds(run: dict) -> dict[str, float]:
    """Per plan ("full", "full, 8-bit", "lora", "qlora"), the tokens/s of the benchmark row with today's course recipe.

    Runs from before the course kept QLoRA's embedding and norms in the compute dtype have an upcast "course" row;
    where such a run also measured the same knobs without the upcast, that row is today's recipe. "full, 8-bit" is
    notebook 1's low-memory plan: its own row, or no speed where the run did not measure it.
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
