"""Run the course headless: execute every notebook in order, in place, and print the comparison table.

Usage (from the repository root; `make course` does this inside .venv):
    python scripts/run_course.py [notebooks/02_lora.ipynb ...]
The profile follows COURSE_PROFILE (default: auto = the real model on a CUDA GPU, the tiny model otherwise).
Each notebook is saved with its outputs only after it ran to the end without error, so a failed run never
replaces a good notebook; the error and the cell that raised it are printed instead.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [
    "01_full_finetuning.ipynb",
    "02_lora.ipynb",
    "03_qlora.ipynb",
    "04_compare.ipynb",
]


def run_notebook(path: Path) -> float:
    """Execute one notebook from a fresh kernel in its own folder and save it in place; return seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    client.execute()
    tmp = path.with_suffix(".ipynb.partial")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.time() - start


def print_comparison(results_dir: Path) -> None:
    """Print the comparison table of notebook 4, and any missing, stale or mixed results."""
    sys.path.insert(0, str(ROOT))
    from helpers.compare import comparison_rows, format_rows, load_all

    found, problems = load_all(results_dir, ROOT / "notebooks")
    print(f"\nComparison of the results in {results_dir}:")
    for problem in problems:
        print(f"  NOTE {problem}")
    if found:
        print(format_rows(comparison_rows(found)))


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or [ROOT / "notebooks" / n for n in NOTEBOOKS]
    paths = [p for p in paths if p.exists()]
    for path in paths:
        print(f"Running {path} ...", flush=True)
        try:
            seconds = run_notebook(path)
        except CellExecutionError as err:
            print(f"FAILED: {path} stopped with an error; the saved notebook was left as it was.")
            print(str(err)[-3000:])
            return 1
        print(f"  done in {seconds:.0f} s, outputs saved in the notebook", flush=True)
    print_comparison(Path(os.environ.get("COURSE_RESULTS_DIR") or ROOT / "results"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
