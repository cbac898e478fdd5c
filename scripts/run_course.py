"""Run the course headless: execute every notebook in order, in place, and print the comparison table.

Usage (from the repository root; `make course` does this inside .venv):
    python scripts/run_course.py [options] [notebooks/02_lora.ipynb ...]
The profile follows COURSE_PROFILE (default: auto = the real model on a CUDA GPU, the tiny model otherwise).
Each notebook is saved with its outputs only after it ran to the end without error, so a failed run never
replaces a good notebook; the error and the cell that raised it are printed instead.

Options:
    --out DIR       save the executed notebooks into DIR (failed ones too, as far as they ran), not in place
    --keep-going    after a failed notebook, run the next ones anyway (default: stop at the first failure)
    --summary FILE  write a JSON summary: per notebook its seconds, status and error, and the stdout of every
                    golden cell (source containing '# NBVAL_CHECK_OUTPUT' or tagged 'nbval-check-output'),
                    keyed by notebook and cell index; rewritten after each notebook
    --timeout S     stop a notebook that runs longer than S seconds in all (default: one hour per cell)
    --no-compare    do not print the comparison table at the end
Exit status: 0 when every notebook ran to the end, else 1.

The kernel is nbclient's "python3": an installed kernelspec of that name if there is one, else
(jupyter_client's fallback when only ipykernel is importable) ipykernel in this same interpreter,
sys.executable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from helpers import ROOT

NOTEBOOKS = [
    "01_full_finetuning.ipynb",
    "02_lora.ipynb",
    "03_qlora.ipynb",
    "04_compare.ipynb",
]
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CHECK_TAG = "nbval-check-output"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERROR_TAIL = 3000  # characters of an error kept in the summary and printed


class NotebookTimeout(TimeoutError):
    """The notebook ran past its --timeout."""


def is_golden(cell: dict) -> bool:
    """A code cell whose printed output nbval compares: marked in its source or tagged in its metadata."""
    if cell.get("cell_type") != "code":
        return False
    tags = cell.get("metadata", {}).get("tags", [])
    return CHECK_MARK in cell.get("source", "") or CHECK_TAG in tags


def golden_outputs(nb: dict) -> dict[str, str]:
    """{cell index: the cell's stdout text} for the golden cells that produced output."""
    found = {}
    for index, cell in enumerate(nb.get("cells", [])):
        if not is_golden(cell):
            continue
        text = "".join(
            out.get("text", "")
            for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" and out.get("name") == "stdout"
        )
        if text or cell.get("outputs"):
            found[str(index)] = text
    return found


def describe_kernel() -> str:
    """Which command the 'python3' kernel will run: an installed kernelspec, or ipykernel's built-in one."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        return f"{' '.join(spec.argv[:3])} (kernelspec in {spec.resource_dir})"
    except Exception as err:  # the run itself will report the problem
        return f"unknown ({type(err).__name__}: {err})"


def run_notebook(
    path: Path,
    nb: dict | None = None,
    dest: Path | None = None,
    label: str = "",
    timeout: float | None = None,
) -> float:
    """Execute one notebook (nb: path read, executed in place in memory) from a fresh kernel in its folder.

    Return the seconds it took. Saved to dest when given (also after an error, as far as it ran: the exception
    is re-raised after saving), else in place and only when it ran to the end.
    """
    nb = nb if nb is not None else nbformat.read(path, as_version=4)
    # a run that stops early must not keep the committed outputs of the cells it never ran
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.time()
    deadline = start + timeout if timeout else None

    def on_cell_start(cell, cell_index):
        if cell.cell_type == "markdown":
            heading = next((line for line in cell.source.splitlines() if line.startswith("## ")), None)
            if heading:
                print(f"  {label}{time.time() - start:6.0f} s  {heading[3:].strip()}", flush=True)
        if deadline is not None and time.time() >= deadline:
            raise NotebookTimeout(f"{path.name} ran past its {timeout:.0f} s limit before cell {cell_index}")

    # no cell may run past the notebook's deadline (0 would mean no limit: at least 1)
    def cell_timeout(cell):
        return max(1, int(deadline - time.time())) if deadline is not None else 3600

    client = NotebookClient(
        nb,
        timeout=3600,
        timeout_func=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_cell_start,
    )
    try:
        client.execute()
    except BaseException:
        if dest is not None:
            save(nb, dest)
        raise
    save(nb, dest or path)
    return time.time() - start


OBJECT_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")


def save(nb: dict, path: Path) -> None:
    """Write a notebook atomically, without bare object reprs where a table (HTML) says the same."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/html" in data and OBJECT_REPR.fullmatch(str(data.get("text/plain", "")).strip()):
                # e.g. '<pandas.io.formats.style.Styler at 0x7f...>' beside its HTML table
                del data["text/plain"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".ipynb.partial")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def print_comparison(results_dir: Path) -> None:
    """Print the comparison table of notebook 4, and any missing, stale or mixed results."""
    from helpers.compare import comparison_rows, format_rows, load_all

    found, problems = load_all(results_dir, ROOT / "notebooks")
    print(f"\nComparison of the results in {results_dir}:")
    for problem in problems:
        print(f"  NOTE {problem}")
    if found:
        print(format_rows(comparison_rows(found)))


def write_summary(path: Path, entries: list[dict]) -> None:
    """The JSON summary: per notebook, and the golden cells' stdout keyed by notebook and cell index."""
    summary = {
        "ok": all(e["ok"] for e in entries),
        "notebooks": entries,
        "checks": {e["notebook"]: e["checks"] for e in entries},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: the four course notebooks in order")
    parser.add_argument("--out", type=Path, help="save executed notebooks here instead of in place")
    parser.add_argument("--keep-going", action="store_true", help="run the next notebooks after a failure")
    parser.add_argument("--summary", type=Path, help="write a JSON summary to this file")
    parser.add_argument("--timeout", type=float, help="seconds one notebook may run in all")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison table at the end")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Stored outputs get no progress-bar frames (the kernels inherit this; interactive runs keep their bars).
    os.environ.setdefault("TQDM_DISABLE", "1")
    paths = [p.resolve() for p in args.notebooks] or [ROOT / "notebooks" / n for n in NOTEBOOKS]
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"NOTE {path} does not exist: skipped")
    paths = [p for p in paths if p.exists()]
    out = args.out.resolve() if args.out else None
    print(f"Kernel: {describe_kernel()}", flush=True)
    entries: list[dict] = []
    failed = False
    for i, path in enumerate(paths, 1):
        entry = {
            "notebook": path.name,
            "source": str(path),
            "status": "skipped",
            "ok": False,
            "seconds": None,
            "error": None,
            "saved": None,
            "checks": {},
        }
        entries.append(entry)
        if failed and not args.keep_going:
            entry["error"] = "not run: an earlier notebook failed (no --keep-going)"
            continue
        dest = out / path.name if out else None
        print(f"[{i}/{len(paths)}] Running {path} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        start = time.time()
        try:
            seconds = run_notebook(
                path, nb, dest, label=f"[{i}/{len(paths)} {path.stem}] ", timeout=args.timeout
            )
        except Exception as err:
            failed = True
            entry["seconds"] = round(time.time() - start, 1)
            entry["status"] = "timeout" if isinstance(err, TimeoutError) else "failed"
            entry["error"] = f"{type(err).__name__}: {ANSI.sub('', str(err))}"[-ERROR_TAIL:]
            entry["checks"] = golden_outputs(nb)
            if dest is not None and dest.exists():
                entry["saved"] = str(dest)
            where = (
                f"saved as far as it ran in {dest}"
                if entry["saved"]
                else "the saved notebook was left as it was"
            )
            print(f"FAILED: {path} stopped with an error after {entry['seconds']:.0f} s; {where}.")
            print(entry["error"], flush=True)
        else:
            entry.update(status="ok", ok=True, seconds=round(seconds, 1), saved=str(dest or path))
            entry["checks"] = golden_outputs(nb)
            print(f"  done in {seconds:.0f} s, outputs saved in {dest or 'the notebook'}", flush=True)
        if args.summary:
            write_summary(args.summary, entries)
    if args.summary:
        write_summary(args.summary, entries)
    if failed and not args.keep_going:
        return 1
    if not args.no_compare:
        print_comparison(Path(os.environ.get("COURSE_RESULTS_DIR") or ROOT / "results"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
