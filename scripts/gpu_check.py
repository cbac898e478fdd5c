"""Check the notebooks on a CUDA GPU: the work behind scripts/gpu_check.sh (run that; it keeps the log).

Runs notebooks 01-04 in the llama-3.2-1b-random profile with the smoke budget (COURSE_SMOKE=1), in two
regimes, in this order: native 01, 02, 03, then t4 01, 02, 03, then native 04 and t4 04.
    native  COURSE_PRECISION=auto (the GPU's own precision)
    t4      COURSE_PRECISION=fp16 and COURSE_GPU_MEMORY_GIB=15 (the memory a T4 has), COURSE_PLAN="low memory"
Each notebook runs in its own scripts/run_course.py process (fresh kernel); the executed notebooks go to a
scratch folder outside the repository. Per regime it writes results/gpu/<gpu>/<regime>/check.json (rewritten
after each run): the GPU, the environment used, per notebook its seconds, status and error, the stdout of the
golden cells ('# NBVAL_CHECK_OUTPUT') and the library versions. The notebooks write full.json, lora.json and
qlora.json there. Check files name no machine paths: paths in the repository are relative, the scratch folder
is <scratch>, the wheels' folder <site>, the interpreter's packages <site-packages> and <stdlib>, the home
folder ~ (the notebooks themselves get the real paths).

--full: the same runs in the same order at the notebooks' real budget (COURSE_SMOKE unset), into
results/gpu/<gpu>/full/<regime>/ (the smoke results stay; notebook 4's table of GPU rows does not read this
folder), with a deadline of 520 s and 300 s per notebook, so that it ends within 9 minutes even when the kill
backstop fires: what does not fit is skipped, the comparisons first. Each run whose notebook wrote its results
file gets a "cost" in check.json, also printed: the run's wall seconds, train seconds and tokens/s, the train
peaks allocated and reserved (from the results file) and the model FLOPs utilisation, MFU = tokens/s x FLOPs
per token / the GPU's dense bf16/fp16 peak (PEAK_TFLOPS; null, with the reason, for a GPU not listed).
FLOPs per trained token: 2 per weight forward, 2 per weight backward for the input gradient (frozen weights
too), 2 more per trainable weight for its own gradient; that is 6 N for full fine-tuning and
4 N_frozen + 6 N_trainable for LoRA and QLoRA. Attention's seq^2 term, QLoRA's dequantization and padding are
not counted (tokens are the non-padding ones the notebooks count).

Before any notebook: the wheels in .whl/ (scripts/gpu_wheels.sh) are installed into /tmp/site, which goes
first on PYTHONPATH (the kernels inherit it); then one line of versions is printed and bitsandbytes must
quantize and dequantize a CUDA tensor in 4 bits. If either fails, no notebook runs.

Without CUDA, or with --dry-run, nothing runs: it prints the plan, one item a line, and exits 0:
    DRY-RUN reason=...            why nothing runs
    GPU name=... slug=...         results go to results/gpu/<slug>/<regime> (--full: <slug>/full/<regime>)
    SETTINGS mode=smoke|full budget_s=... ...
    WHEEL <file>                  one line per wheel it would install (none: no line)
    INSTALL <command>             the install command, when there are wheels
    RUN <i>/<n> <regime> <notebook> timeout_s=<s> KEY=VALUE ...
                                  one line per notebook run, its whole environment
Values are quoted for a POSIX shell (shlex.split reads a line back).

Exit status: 0 when every step ran and passed (or after a dry run), 1 otherwise (a failed, timed-out or
skipped run, or a failed install or preflight).

Settings (environment; the defaults fit the device tool's 10-minute limit with room to spare):
    GPU_CHECK_BUDGET_S=450            deadline, from the start: no notebook run starts or runs past it; a run
                                      with less than 20 s left is skipped (--full: 520)
    GPU_CHECK_NOTEBOOK_TIMEOUT_S=240  the most one notebook run may take (--full: 300)
    GPU_CHECK_SCRATCH=/tmp/course-gpu outputs, executed notebooks, summaries, the random model's cache
    GPU_CHECK_WHEELS=<repo>/.whl      wheels to install first; GPU_CHECK_SITE=/tmp/site where they go
    GPU_CHECK_RESULTS=<repo>/results/gpu  where <slug>/<regime>/ go
    GPU_CHECK_NOTEBOOKS, GPU_CHECK_REGIMES  space-separated overrides of the notebooks (paths) and regimes
    GPU_CHECK_RUNS                    space-separated regime:notebook pairs, in order
                                      (overrides both, e.g. a rerun)
    OUT                               if set: $OUT/gpu_results.tar.gz (results/gpu/) and the executed
                                      notebooks of up to 4 failed runs
                                      ($OUT/gpu_check.log comes from gpu_check.sh)
Option --allow-cpu (for tests on a machine without CUDA): run anyway, with GPU slug 'cpu' and no bitsandbytes
round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# the deadline counts from here: the CUDA probe and the install are part of the budget
START = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent  # its own: it runs before the course's packages are installed
NOTEBOOKS = [
    "notebooks/01_full_finetuning.ipynb",
    "notebooks/02_lora.ipynb",
    "notebooks/03_qlora.ipynb",
    "notebooks/04_compare.ipynb",
]
REGIMES = {
    "native": {"COURSE_PRECISION": "auto"},
    # COURSE_PLAN: notebook 1 trains its "low memory" plan under the cap even where the estimate says it won't
    # fit, so the T4 verdict is measured, not estimated.
    "t4": {"COURSE_PRECISION": "fp16", "COURSE_GPU_MEMORY_GIB": "15", "COURSE_PLAN": "low memory"},
}
PROFILE = "llama-3.2-1b-random"
MIN_RUN_S = 20  # a run with less time than this before the deadline is skipped
KILL_GRACE_S = 20  # run_course.py enforces the timeout itself; this is the backstop
MAX_FAILED_NOTEBOOKS = 4  # executed notebooks of failed runs copied to $OUT
MAX_OUT_FILE = 16 * 2**20  # the device tool returns files up to 16 MiB
VERSIONS_MARK = "PREFLIGHT_VERSIONS "
# (deadline, the most one notebook run may take) in seconds. Both fit the device tool's 10 minutes a call;
# --full's deadline plus KILL_GRACE_S stays within 9 minutes.
BUDGETS = {"smoke": (450.0, 240.0), "full": (520.0, 300.0)}
RESULTS_FILES = {
    "01_full_finetuning.ipynb": "full.json",
    "02_lora.ipynb": "lora.json",
    "03_qlora.ipynb": "qlora.json",
}
# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, by a pattern of the name torch reports.
# The H100 SXM's name says HBM3; the H100 PCIe and NVL have lower peaks and are not listed:
# a GPU not listed gets no MFU.
PEAK_TFLOPS = [
    (r"H200", 989.0),
    (r"H100.*(SXM|HBM3)", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
    (r"\bT4\b", 65.0),
]

# Run by the machine's python3 with the kit on PYTHONPATH, from the repository root. argv[1]: "cuda" or "cpu".
PREFLIGHT = r"""
import importlib, importlib.metadata as md, json, platform, sys, traceback
names = ["torch", "transformers", "tokenizers", "huggingface_hub", "peft", "trl", "bitsandbytes", "datasets",
         "accelerate", "safetensors", "matplotlib", "psutil", "nbclient", "nbformat", "ipykernel",
         "jupyter_client", "ipython", "numpy", "pandas", "pyarrow", "fsspec", "regex", "click", "typer",
         "anyio", "idna", "packaging", "pyyaml", "tqdm", "filelock", "typing_extensions"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"
versions = {"python": platform.python_version(), **{n: version(n) for n in names}}
import torch
versions["torch_cuda"] = str(torch.version.cuda)
print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
print("PREFLIGHT_VERSIONS " + json.dumps(versions), flush=True)
pins = {}
for line in open("requirements.txt", encoding="utf-8").read().splitlines():
    line = line.split("#")[0].strip()
    if "==" in line:
        name, pin = line.split("==", 1)
        pins[name.strip().lower().replace("-", "_")] = pin.strip()
problems = []
for module, dist in [("transformers", "transformers"), ("tokenizers", "tokenizers"),
                     ("huggingface_hub", "huggingface_hub"), ("peft", "peft"), ("trl", "trl"),
                     ("datasets", "datasets"), ("accelerate", "accelerate"), ("bitsandbytes", "bitsandbytes"),
                     ("nbclient", "nbclient"), ("nbformat", "nbformat"), ("ipykernel", "ipykernel"),
                     ("jupyter_client", "jupyter_client"), ("IPython", "ipython")]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:
        problems.append(f"import {module} failed: {type(err).__name__}: {err}")
        continue
    got, want = getattr(mod, "__version__", None), pins.get(dist)
    print(f"  {module} {got} from {getattr(mod, '__file__', '?')}", flush=True)
    if want and got and str(got).split("+")[0] != want:
        problems.append(f"{module} {got} is imported, requirements.txt pins {want}")
# Requirements of the carried wheels (argv[2]: where they were installed) that this machine does not meet: a
# warning, since pip's metadata is stricter than what the notebooks use; the notebooks themselves will tell.
if len(sys.argv) > 2:
    from packaging.requirements import Requirement
    for dist in md.distributions(path=[sys.argv[2]]):
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            found = version(req.name)
            if found == "missing" or not req.specifier.contains(found, prereleases=True):
                print(f"  WARNING {dist.metadata['Name']} {dist.version} needs {req}, found {found}",
                      flush=True)
try:
    import datasets
    datasets.Dataset.from_dict({"a": [1, 2]}).map(lambda row: {"b": row["a"] + 1})
except Exception as err:
    problems.append(f"datasets cannot build and map a small Dataset: {type(err).__name__}: {err}")
if sys.argv[1] == "cuda":
    try:
        lib = getattr(importlib.import_module("bitsandbytes.cextension"), "lib", None)
        print(f"  bitsandbytes library: {type(lib).__name__} {getattr(lib, '_name', '')}", flush=True)
    except Exception as err:
        print(f"  bitsandbytes library: unknown ({type(err).__name__}: {err})", flush=True)
    try:
        import bitsandbytes.functional as F
        for dtype in (torch.bfloat16, torch.float16):
            x = torch.randn(256, 256, device="cuda", dtype=dtype)
            q, state = F.quantize_4bit(x, quant_type="nf4")
            y = F.dequantize_4bit(q, state)
            torch.cuda.synchronize()
            rel = ((y.float() - x.float()).abs().mean() / x.float().abs().mean()).item()
            if y.shape != x.shape or y.dtype != dtype or not torch.isfinite(y).all() or not rel < 0.25:
                raise RuntimeError(f"bad round trip in {dtype}: shape {tuple(y.shape)}, {y.dtype}, "
                                   f"relative error {rel:.3f}")
            print(f"  bitsandbytes nf4 round trip on cuda, {dtype}: relative error {rel:.3f}", flush=True)
    except Exception as err:
        traceback.print_exc()
        problems.append(f"bitsandbytes 4-bit round trip on cuda failed ({type(err).__name__}: {err}): "
                        "QLoRA cannot run; check that .whl/ holds bitsandbytes "
                        "with libbitsandbytes_cuda130.so "
                        f"and that torch.version.cuda ({torch.version.cuda}) is 13.x")
else:
    print("  bitsandbytes round trip skipped: no CUDA (--allow-cpu)", flush=True)
for problem in problems:
    print(f"PREFLIGHT FAILED: {problem}", flush=True)
sys.exit(1 if problems else 0)
"""

PROBE = (
    "import json, torch; ok = torch.cuda.is_available(); "
    "print(json.dumps({'cuda': ok, 'name': torch.cuda.get_device_name(0) if ok else None}))"
)


@dataclass
class Run:
    index: int
    regime: str
    notebook: Path
    env: dict[str, str]
    record: dict = field(default_factory=dict)


class Check:
    """One GPU check: the plan, the runs, the records written to check.json."""

    def __init__(self, gpu_name: str, slug: str, cuda: bool, full: bool = False):
        self.start = START
        self.gpu_name, self.slug, self.cuda, self.full = gpu_name, slug, cuda, full
        self.mode = "full" if full else "smoke"
        budget, notebook_timeout = BUDGETS[self.mode]
        self.budget = float(os.environ.get("GPU_CHECK_BUDGET_S", budget))
        self.notebook_timeout = float(os.environ.get("GPU_CHECK_NOTEBOOK_TIMEOUT_S", notebook_timeout))
        self.scratch = Path(os.environ.get("GPU_CHECK_SCRATCH", "/tmp/course-gpu")).resolve()
        self.results = Path(os.environ.get("GPU_CHECK_RESULTS", ROOT / "results" / "gpu")).resolve()
        self.wheel_dir = Path(os.environ.get("GPU_CHECK_WHEELS", ROOT / ".whl")).resolve()
        self.site = Path(os.environ.get("GPU_CHECK_SITE", "/tmp/site")).resolve()
        self.wheels = sorted(self.wheel_dir.glob("*.whl")) if self.wheel_dir.is_dir() else []
        notebooks = os.environ.get("GPU_CHECK_NOTEBOOKS", "").split() or NOTEBOOKS
        regimes = os.environ.get("GPU_CHECK_REGIMES", "").split() or list(REGIMES)
        unknown = [r for r in regimes if r not in REGIMES]
        if unknown:
            raise SystemExit(f"unknown regime(s) {unknown}: use {list(REGIMES)}")
        # Both regimes' training notebooks first, the comparisons last: a deadline skips what matters least.
        pairs = [
            (regime, (ROOT / nb).resolve()) for regime in regimes for nb in notebooks if "compare" not in nb
        ]
        pairs += [
            (regime, (ROOT / nb).resolve()) for regime in regimes for nb in notebooks if "compare" in nb
        ]
        # e.g. "t4:notebooks/03_qlora.ipynb native:notebooks/01_full_finetuning.ipynb"
        if os.environ.get("GPU_CHECK_RUNS"):
            pairs = [
                (r, (ROOT / nb).resolve())
                for r, nb in (item.split(":", 1) for item in os.environ["GPU_CHECK_RUNS"].split())
            ]
            if any(r not in REGIMES for r, _ in pairs):
                raise SystemExit(f"GPU_CHECK_RUNS: regimes are {list(REGIMES)}")
        self.runs = [Run(i, regime, nb, self.run_env(regime)) for i, (regime, nb) in enumerate(pairs, 1)]
        self.preflight: dict = {"ok": None, "error": None}
        self.versions: dict = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # -- plan ----------------------------------------------------------------------------------------------

    def results_dir(self, regime: str) -> Path:
        """Where a regime's files go: results/gpu/<slug>/<regime>, or <slug>/full/<regime> for --full."""
        base = self.results / self.slug
        return base / "full" / regime if self.full else base / regime

    def run_env(self, regime: str) -> dict[str, str]:
        """Variables each notebook run of this regime gets (on top of the inherited ones, minus COURSE_*)."""
        return {
            "COURSE_PROFILE": PROFILE,
            **({} if self.full else {"COURSE_SMOKE": "1"}),
            **REGIMES[regime],
            "COURSE_RESULTS_DIR": str(self.results_dir(regime)),
            "COURSE_OUTPUT_DIR": str(self.scratch / regime / "outputs"),
            "COURSE_CACHE_DIR": str(self.scratch / "cache"),
            "HF_HUB_OFFLINE": "1",
            # the setup cell's pip fails at once instead of retrying a network there is not
            "PIP_NO_INDEX": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def install_command(self) -> list[str]:
        return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                "--no-cache-dir", "--upgrade", "--target", str(self.site), *map(str, self.wheels)]

    def executed_path(self, run: Run) -> Path:
        return self.scratch / "executed" / run.regime / run.notebook.name

    def print_plan(self, reason: str) -> None:
        q = shlex.quote
        print(f"DRY-RUN reason={q(reason)}")
        print(f"GPU name={q(self.gpu_name)} slug={q(self.slug)}")
        print(
            f"SETTINGS mode={self.mode} budget_s={self.budget:g} "
            f"notebook_timeout_s={self.notebook_timeout:g} "
            f"scratch={q(str(self.scratch))} python={q(sys.executable)}"
        )
        for wheel in self.wheels:
            print(f"WHEEL {q(wheel.name)}")
        if self.wheels:
            cmd = self.install_command()
            shown = [*cmd[: -len(self.wheels)], str(self.wheel_dir / "*.whl")]
            print(f"INSTALL {' '.join(map(q, shown))} && PYTHONPATH={q(str(self.site))}:$PYTHONPATH")
        for run in self.runs:
            env = " ".join(f"{k}={q(v)}" for k, v in run.env.items())
            notebook = run.notebook.relative_to(ROOT) if run.notebook.is_relative_to(ROOT) else run.notebook
            print(f"RUN {run.index}/{len(self.runs)} {run.regime} {q(str(notebook))} "
                  f"timeout_s={self.notebook_timeout:g} {env}")

    # -- running -------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{self.elapsed():4.0f} s] {message}", flush=True)

    def prepare(self) -> None:
        """Empty this check's result folders and scratch, so nothing stale is mixed in."""
        for regime in {run.regime for run in self.runs}:
            shutil.rmtree(self.results_dir(regime), ignore_errors=True)
            self.results_dir(regime).mkdir(parents=True)
            shutil.rmtree(self.scratch / regime, ignore_errors=True)
            shutil.rmtree(self.scratch / "executed" / regime, ignore_errors=True)
        shutil.rmtree(self.scratch / "summaries", ignore_errors=True)
        (self.scratch / "summaries").mkdir(parents=True)
        for run in self.runs:
            run.record = {"status": "pending", "ok": False, "seconds": None, "error": None}
        self.write_checks()

    def install_wheels(self) -> bool:
        if not self.wheels:
            self.log(f"no wheels in {self.wheel_dir}: using the machine's packages")
            return True
        self.log(f"installing {len(self.wheels)} wheels from {self.wheel_dir} into {self.site}")
        shutil.rmtree(self.site, ignore_errors=True)
        done = subprocess.run(self.install_command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)
        print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            self.preflight = {
                "ok": False,
                "error": f"pip install of the wheels failed:\n{done.stdout[-3000:]}",
            }
            self.log(f"wheel install FAILED (exit {done.returncode}): no notebook will run")
            return False
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(self.site), os.environ.get("PYTHONPATH")] if p
        )
        self.log(f"installed; PYTHONPATH={os.environ['PYTHONPATH']}")
        return True

    def run_preflight(self) -> bool:
        self.log(
            "preflight: versions, imports" + (", bitsandbytes 4-bit round trip on cuda" if self.cuda else "")
        )
        start = time.monotonic()
        try:
            argv = [sys.executable, "-c", PREFLIGHT, "cuda" if self.cuda else "cpu"]
            if self.wheels:
                argv.append(str(self.site))
            done = subprocess.run(argv, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            output, code = done.stdout, done.returncode
        except subprocess.TimeoutExpired as err:
            output, code = err.stdout or "", "timeout (300 s)"
            output = output.decode(errors="replace") if isinstance(output, bytes) else output
        for line in output.splitlines():
            if line.startswith(VERSIONS_MARK):
                self.versions = json.loads(line[len(VERSIONS_MARK):])
            else:
                print(line, flush=True)
        ok = code == 0
        failures = [line for line in output.splitlines() if line.startswith("PREFLIGHT FAILED")]
        self.preflight = {"ok": ok, "seconds": round(time.monotonic() - start, 1),
                          "error": None if ok else ("\n".join(failures) or f"exit {code}:\n{output[-3000:]}")}
        self.log("preflight passed" if ok else "preflight FAILED: no notebook will run")
        return ok

    def run_all(self) -> None:
        for run in self.runs:
            left = self.budget - self.elapsed()
            if left < MIN_RUN_S:
                run.record = {
                    "status": "skipped",
                    "ok": False,
                    "seconds": None,
                    "error": f"not started: {max(left, 0):.0f} s left before the {self.budget:g} s deadline",
                }
                self.log(f"{run.index}/{len(self.runs)} {run.regime} {run.notebook.name}: SKIPPED (deadline)")
            else:
                self.run_one(run, min(self.notebook_timeout, left))
            self.write_checks()
            last_of_regime = run is self.runs[-1] or self.runs[run.index].regime != run.regime
            # free the disk: the checkpoints and models of this regime are not needed any more
            if last_of_regime:
                shutil.rmtree(self.scratch / run.regime / "outputs", ignore_errors=True)

    def run_one(self, run: Run, timeout: float) -> None:
        name = f"{run.index}/{len(self.runs)} {run.regime} {run.notebook.name}"
        summary = self.scratch / "summaries" / f"{run.regime}-{run.notebook.stem}.json"
        executed = self.executed_path(run)
        cmd = [sys.executable, str(ROOT / "scripts" / "run_course.py"), "--out", str(executed.parent),
               "--summary", str(summary), "--no-compare", "--timeout", f"{timeout:.0f}", str(run.notebook)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_")}
        env.update(run.env)
        self.log(f"{name}: start (timeout {timeout:.0f} s)")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        tail: deque[str] = deque(maxlen=40)

        def pump() -> None:
            for line in proc.stdout:
                tail.append(line)
                print(f"    | {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        killed = False
        try:
            code = proc.wait(timeout=timeout + KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            killed = True
            kill_tree(proc.pid)
            code = proc.wait()
        reader.join(timeout=10)
        seconds = round(time.monotonic() - start, 1)
        record = {
            "status": "failed",
            "ok": False,
            "seconds": seconds,
            "timeout_s": round(timeout),
            "exit_code": code,
            "error": None,
            "executed": str(executed) if executed.exists() else None,
        }
        entry = read_summary_entry(summary)
        if entry is not None:
            record.update(status=entry["status"], ok=entry["ok"] and code == 0, error=entry["error"],
                          notebook_seconds=entry["seconds"], checks=entry["checks"])
        if killed:
            record.update(status="timeout", ok=False)
            record["error"] = f"killed after {seconds:.0f} s (timeout {timeout:.0f} s). " + (
                record["error"] or ""
            )
        if not record["ok"] and not record["error"]:
            record["error"] = f"run_course.py exited with {code}; its last lines:\n" + "".join(tail)[-3000:]
        if self.full and (cost := self.cost(run, seconds)):
            record["cost"] = cost
        run.record = record
        self.log(f"{name}: {record['status'].upper() if not record['ok'] else 'ok'} in {seconds:.0f} s")
        if "cost" in record:
            self.log(f"{name}: {cost_line(record['cost'])}")

    def cost(self, run: Run, seconds: float) -> dict | None:
        """A run's cost, from the results file its notebook wrote; None when it wrote none."""
        name = RESULTS_FILES.get(run.notebook.name)
        path = self.results_dir(run.regime) / name if name else None
        if path is None or not path.is_file():
            return None
        try:
            return run_cost(json.loads(path.read_text()), self.gpu_name, seconds)
        except (OSError, ValueError, KeyError, TypeError) as err:
            return {"error": f"cannot read {path.name}: {type(err).__name__}: {err}"}

    # -- results -------------------------------------------------------------------------------------------

    def places(self) -> dict[str, str]:
        """Machine paths a check file may name, with their labels; the repository's own paths go relative."""
        python = sysconfig.get_paths()
        labels = {
            self.scratch: "<scratch>",
            self.site: "<site>",
            self.wheel_dir: "<wheels>",
            self.results: "<results>",
            Path(python["purelib"]): "<site-packages>",
            Path(python["platlib"]): "<site-packages>",
            Path(python["stdlib"]): "<stdlib>",
            Path.home(): "~",
        }
        outside = {str(path): label for path, label in labels.items()
                   if len(path.parts) > 1 and not path.is_relative_to(ROOT)}
        return {f"{ROOT}/": "", str(ROOT): "<repo>", **outside}

    def write_checks(self) -> None:
        for regime in {run.regime for run in self.runs}:
            runs = [run for run in self.runs if run.regime == regime]
            golden = {run.notebook.name: run.record.get("checks", {}) for run in runs}
            false_lines = [
                f"{nb} cell {cell}: {line.strip()}"
                for nb, cells in golden.items()
                for cell, text in cells.items()
                for line in text.splitlines()
                if re.search(r"\bFalse\b", line)
            ]
            check = {
                "gpu": self.gpu_name,
                "gpu_slug": self.slug,
                "regime": regime,
                "ok": bool(self.preflight.get("ok")) and all(run.record.get("ok") for run in runs),
                "env": runs[0].env,
                "pythonpath": os.environ.get("PYTHONPATH", ""),
                "settings": {
                    "mode": self.mode,
                    "budget_s": self.budget,
                    "notebook_timeout_s": self.notebook_timeout,
                    "wheels": [w.name for w in self.wheels],
                },
                "started": self.started,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "preflight": self.preflight,
                "versions": self.versions,
                "notebooks": {
                    run.notebook.name: {k: v for k, v in run.record.items() if k != "checks"} for run in runs
                },
                "golden": golden,
                "golden_false": false_lines,
            }
            path = self.results_dir(regime) / "check.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.partial")
            tmp.write_text(json.dumps(scrub(check, self.places()), indent=2) + "\n")
            os.replace(tmp, path)

    def skip_all(self, why: str) -> None:
        for run in self.runs:
            run.record = {"status": "skipped", "ok": False, "seconds": None, "error": f"not started: {why}"}
        self.write_checks()

    def pack_out(self) -> None:
        out = os.environ.get("OUT")
        if not out:
            return
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out / "gpu_results.tar.gz", "w:gz") as tar:
            tar.add(self.results, arcname="results/gpu")
        copied = 0
        for run in self.runs:
            executed = run.record.get("executed")
            if run.record.get("ok") or not executed or not Path(executed).exists():
                continue
            if copied == MAX_FAILED_NOTEBOOKS:
                self.log(f"not copied to $OUT (more than {MAX_FAILED_NOTEBOOKS} failed): {executed}")
                continue
            if Path(executed).stat().st_size > MAX_OUT_FILE:
                self.log(f"not copied to $OUT (over 16 MiB): {executed}")
                continue
            name = re.sub(r"[^A-Za-z0-9._-]", "_", f"failed-{run.regime}-{Path(executed).name}")
            shutil.copyfile(executed, out / name)
            copied += 1
        self.log(
            f"packed {self.results} into {out / 'gpu_results.tar.gz'}; {copied} failed notebook(s) copied"
        )

    def report(self) -> bool:
        print("\nregime  notebook                     status    seconds  error")
        for run in self.runs:
            seconds = run.record.get("seconds")
            error = (run.record.get("error") or "").strip().splitlines()
            print(f"{run.regime:7s} {run.notebook.name:28s} {run.record.get('status', '?'):9s} "
                  f"{'' if seconds is None else f'{seconds:7.0f}':>7s}  {error[-1][:100] if error else ''}")
        costs = [run for run in self.runs if "cost" in run.record]
        if costs:
            print(
                "\ncost (MFU: 4 x all + 2 x trainable parameters in FLOPs per non-padding token, "
                "attention's seq^2 term not counted, over the GPU's dense 16-bit peak)"
            )
        for run in costs:
            print(f"{run.regime:7s} {run.notebook.name:28s} {cost_line(run.record['cost'])}")
        for regime in {run.regime: None for run in self.runs}:
            print(f"check.json: {self.results_dir(regime) / 'check.json'}")
        if not self.preflight.get("ok"):
            print(f"preflight: {self.preflight.get('error')}")
        ok = bool(self.preflight.get("ok")) and all(run.record.get("ok") for run in self.runs)
        self.log("ALL PASSED" if ok else "SOME STEPS FAILED OR WERE SKIPPED")
        return ok


def kill_tree(pid: int) -> None:
    """Kill a process we started and all its descendants (the kernel runs in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [pid], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def read_summary_entry(path: Path) -> dict | None:
    """The one notebook entry of a run_course.py summary, or None when it is missing or unreadable."""
    try:
        entries = json.loads(path.read_text())["notebooks"]
        return entries[0] if entries else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def peak_flops(gpu_name: str) -> float | None:
    """The GPU's dense bf16/fp16 peak in FLOP/s (PEAK_TFLOPS), None when it is not listed."""
    return next((tflops * 1e12 for pattern, tflops in PEAK_TFLOPS if re.search(pattern, gpu_name)), None)


def flops_per_token(total_params: int, trainable_params: int) -> int:
    """Training FLOPs per token: 2 forward, 2 backward (input gradient) per weight; 2 more if trainable."""
    return 4 * total_params + 2 * trainable_params


def mfu(tokens_per_second: float, total_params: int, trainable_params: int, peak: float) -> float:
    """Model FLOPs utilisation: the model's training FLOPs per second over the GPU's peak FLOP/s."""
    return tokens_per_second * flops_per_token(total_params, trainable_params) / peak


def run_cost(results: dict, gpu_name: str, wall_s: float) -> dict:
    """A run's time, throughput, train peaks and MFU from its notebook's results file (MFU None, with why)."""
    train = results["peak_memory"]["train"]
    total, trainable = results["total_params"], results["trainable_params"]
    rate, peak = results.get("train_tokens_per_second"), peak_flops(gpu_name)
    note = None if rate else "no train_tokens_per_second in the results file"
    note = note if peak else f"no dense bf16/fp16 peak listed for {gpu_name!r}"
    return {
        "wall_s": wall_s,
        "train_seconds": results.get("train_seconds"),
        "train_tokens_per_second": rate,
        "train_peak_allocated_bytes": train.get("peak_bytes"),
        "train_peak_reserved_bytes": train.get("peak_reserved_bytes"),
        "total_params": total,
        "trainable_params": trainable,
        "flops_per_token": flops_per_token(total, trainable),
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": None if note else mfu(rate, total, trainable, peak),
        "mfu_note": note,
    }


def cost_line(cost: dict) -> str:
    """A run's cost in one line, for the log and the report."""
    if "error" in cost:
        return cost["error"]

    def shown(key: str, spec: str, scale: float = 1) -> str:
        return "?" if cost[key] is None else format(cost[key] / scale, spec)

    gib = 2**30
    return (f"wall {shown('wall_s', '.0f')} s, train {shown('train_seconds', '.1f')} s at "
            f"{shown('train_tokens_per_second', ',.0f')} tokens/s, train peak "
            f"{shown('train_peak_allocated_bytes', '.2f', gib)} GiB allocated / "
            f"{shown('train_peak_reserved_bytes', '.2f', gib)} GiB reserved, MFU {shown('mfu', '.1%')}"
            + (f" ({cost['mfu_note']})" if cost["mfu_note"] else ""))


def scrub(value, places: dict[str, str]):
    """value (a string, or dicts and lists of them) with each place, a path, written as its label instead."""
    if isinstance(value, dict):
        return {key: scrub(item, places) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, places) for item in value]
    if isinstance(value, str):
        # the longest first: a place inside another keeps its label
        for path in sorted(places, key=len, reverse=True):
            # /tmp/site, not /tmp/site-packages nor /tmp/site.old
            end = "" if path.endswith("/") else r"(?![\w-]|\.\w)"
            value = re.sub(rf"(?<![\w.-]){re.escape(path)}{end}", places[path], value)
    return value


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def probe_gpu() -> tuple[bool, str]:
    """(CUDA available, device name or why not), from a child process so this one holds no CUDA context."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180)
        info = json.loads(done.stdout.strip().splitlines()[-1])
        return bool(info["cuda"]), info["name"] or "torch.cuda.is_available() is False"
    except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError, OSError) as err:
        return False, f"no usable torch ({type(err).__name__})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--allow-cpu", action="store_true", help="for tests: run without CUDA")
    parser.add_argument(
        "--full", action="store_true", help="the notebooks' real budget, into <slug>/full/<regime>"
    )
    args = parser.parse_args(argv)

    cuda, name = probe_gpu()
    if cuda:
        gpu, slug = name, slugify(name)
    elif args.allow_cpu and not args.dry_run:
        gpu, slug = "cpu", "cpu"
    else:
        gpu, slug = "no CUDA", "no-cuda"
    check = Check(gpu, slug, cuda=cuda, full=args.full)
    if args.dry_run or not (cuda or args.allow_cpu):
        check.print_plan("--dry-run" if args.dry_run else f"no CUDA: {name}")
        return 0

    check.log(
        f"GPU check ({check.mode}) on {check.gpu_name}: {len(check.runs)} notebook runs, "
        f"deadline {check.budget:g} s"
    )
    check.prepare()
    try:
        if check.install_wheels() and check.run_preflight():
            check.run_all()
        else:
            check.skip_all("the wheel install or the preflight failed")
    finally:
        check.write_checks()
        check.pack_out()
    return 0 if check.report() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
