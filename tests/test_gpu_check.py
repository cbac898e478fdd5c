"""CPU tests of the GPU check (scripts/gpu_check.sh and gpu_check.py), of the wheel kit's check
(scripts/gpu_wheels.sh --check) and of scripts/run_course.py's --out, --summary, --keep-going and --timeout.

Nothing here needs a GPU or the network; the notebooks run are tiny ones written into tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import nbformat
import pytest
from conftest import load_script
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers import ROOT

SCRIPTS = ROOT / "scripts"
COURSE_NOTEBOOKS = [
    "notebooks/01_full_finetuning.ipynb",
    "notebooks/02_lora.ipynb",
    "notebooks/03_qlora.ipynb",
    "notebooks/04_compare.ipynb",
]
RUN_ENV_KEYS = {
    "COURSE_PROFILE",
    "COURSE_SMOKE",
    "COURSE_PRECISION",
    "COURSE_RESULTS_DIR",
    "COURSE_OUTPUT_DIR",
    "COURSE_CACHE_DIR",
    "HF_HUB_OFFLINE",
    "PIP_NO_INDEX",
    "PYTHONUNBUFFERED",
}
KIT = ROOT / ".whl"
# An absolute path on some machine: a check file should name none (a label like <scratch>/ or ~/ is fine).
MACHINE_PATH = re.compile(
    r"(?<![\w.~>-])/(?:tmp|root|home|work|opt|usr|var|mnt|srv|scratch|private|Users)/[^\s\"']*"
)

gpu_check_script = load_script("gpu_check")


def machine_paths(text: str) -> list[str]:
    """The absolute paths of some machine in text."""
    return MACHINE_PATH.findall(text)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that steers the check or the notebooks, plus extra."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COURSE_", "GPU_CHECK_", "KIT_")) and k not in ("OUT", "PYTHONPATH")
    }
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def gpu_check(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh"), *args],
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def parse_plan(stdout: str) -> tuple[dict[str, dict[str, str]], list[str], list[str], list[dict]]:
    """The dry run's lines: ({'DRY-RUN': {...}, 'GPU': {...}, ...}, wheels, install lines, runs)."""
    header, wheels, install, runs = {}, [], [], []
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "WHEEL":
            wheels.extend(shlex.split(rest))
        elif kind == "INSTALL":
            install.append(rest)
        elif kind == "RUN":
            index, regime, notebook, *pairs = shlex.split(rest)
            fields = dict(pair.split("=", 1) for pair in pairs)
            timeout = fields.pop("timeout_s")
            runs.append(
                {"index": index, "regime": regime, "notebook": notebook, "timeout_s": timeout, "env": fields}
            )
        elif kind in ("DRY-RUN", "GPU", "SETTINGS"):
            header[kind] = dict(pair.split("=", 1) for pair in shlex.split(rest))
        else:
            raise AssertionError(f"unexpected line in the dry run: {line!r}")
    return header, wheels, install, runs


def check_plan(
    stdout: str, results_root: Path, wheel_names: list[str], full: bool = False
) -> dict[str, dict[str, str]]:
    """Assert the dry run lists the 8 runs in order with the right environment; return its header."""
    header, wheels, install, runs = parse_plan(stdout)
    slug = header["GPU"]["slug"]
    assert re.fullmatch(r"[a-z0-9-]+", slug)
    assert header["SETTINGS"]["mode"] == ("full" if full else "smoke")
    # comparisons last: the deadline skips them first
    training, compare = COURSE_NOTEBOOKS[:3], COURSE_NOTEBOOKS[3:]
    expected = [
        (regime, nb) for nb_group in (training, compare) for regime in ("native", "t4") for nb in nb_group
    ]
    assert [(r["regime"], r["notebook"]) for r in runs] == expected
    assert [r["index"] for r in runs] == [f"{i}/8" for i in range(1, 9)]
    for run in runs:
        env, regime = run["env"], run["regime"]
        assert (ROOT / run["notebook"]).is_file()
        assert float(run["timeout_s"]) > 0
        keys = RUN_ENV_KEYS - ({"COURSE_SMOKE"} if full else set())  # --full: the notebooks' real budget
        assert set(env) == keys | ({"COURSE_GPU_MEMORY_GIB", "COURSE_PLAN"} if regime == "t4" else set())
        assert env["COURSE_PROFILE"] == "llama-3.2-1b-random"
        assert env.get("COURSE_SMOKE") == (None if full else "1")
        assert env["COURSE_PRECISION"] == {"native": "auto", "t4": "fp16"}[regime]
        if regime == "t4":
            assert env["COURSE_GPU_MEMORY_GIB"] == "15"
            assert env["COURSE_PLAN"] == "low memory", "the T4 verdict for full fine-tuning is measured"
        assert env["COURSE_RESULTS_DIR"] == str(results_root / slug / ("full" if full else "") / regime)
        for key in ("COURSE_OUTPUT_DIR", "COURSE_CACHE_DIR"):  # scratch, outside the repository
            assert Path(env[key]).is_absolute() and not Path(env[key]).is_relative_to(ROOT)
        assert env["HF_HUB_OFFLINE"] == "1"
    outputs = {r["regime"]: r["env"]["COURSE_OUTPUT_DIR"] for r in runs}
    assert outputs["native"] != outputs["t4"]
    assert len({r["env"]["COURSE_CACHE_DIR"] for r in runs}) == 1  # the random model is built once
    assert wheels == sorted(wheel_names)
    if wheel_names:
        assert len(install) == 1 and "--no-index --no-deps" in install[0] and "--target" in install[0]
    else:
        assert install == []
    return header


def fake_wheels(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not really a wheel")


@pytest.mark.skipif(cuda_available(), reason="with CUDA this would run the real check")
def test_without_cuda_it_is_a_dry_run(tmp_path):
    wheels = ["peft-0.21.2-py3-none-any.whl", "trl-1.16.0-py3-none-any.whl"]
    fake_wheels(tmp_path / "wheels", wheels)
    done = gpu_check(
        cwd=tmp_path,
        GPU_CHECK_WHEELS=str(tmp_path / "wheels"),
        GPU_CHECK_SCRATCH=str(tmp_path / "scratch"),
        GPU_CHECK_RESULTS=str(tmp_path / "results"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = check_plan(done.stdout, tmp_path / "results", wheels)
    assert header["DRY-RUN"]["reason"].startswith("no CUDA")
    assert not (tmp_path / "results").exists() and not (tmp_path / "scratch").exists()  # nothing ran


def test_dry_run_flag(tmp_path):
    (tmp_path / "wheels").mkdir()
    done = gpu_check("--dry-run", cwd=tmp_path, GPU_CHECK_WHEELS=str(tmp_path / "wheels"))
    assert done.returncode == 0, done.stdout + done.stderr
    header = check_plan(done.stdout, ROOT / "results" / "gpu", [])
    assert header["DRY-RUN"]["reason"] == "--dry-run"
    assert float(header["SETTINGS"]["budget_s"]) == 450


def test_full_dry_run_plans_the_real_budget(tmp_path):
    """--full --dry-run: the same 8 runs without COURSE_SMOKE, into <slug>/full/<regime>, in 9 minutes."""
    (tmp_path / "wheels").mkdir()
    done = gpu_check("--full", "--dry-run", cwd=tmp_path, GPU_CHECK_WHEELS=str(tmp_path / "wheels"))
    assert done.returncode == 0, done.stdout + done.stderr
    header = check_plan(done.stdout, ROOT / "results" / "gpu", [], full=True)
    budget, timeout = float(header["SETTINGS"]["budget_s"]), float(header["SETTINGS"]["notebook_timeout_s"])
    assert budget + gpu_check_script.KILL_GRACE_S <= 9 * 60  # it ends within 9 minutes, the backstop included
    # one stuck notebook leaves room for more
    assert 400 <= budget and timeout < budget - gpu_check_script.MIN_RUN_S
    assert all(float(run["timeout_s"]) == timeout for run in parse_plan(done.stdout)[3])


def test_mfu_counts_6n_for_full_and_4n_plus_2_trainable_for_adapters():
    """FLOPs per token: 2 forward + 2 input-gradient per weight, 2 more per trainable one; over the peak."""
    assert gpu_check_script.flops_per_token(1_000, 1_000) == 6_000  # full fine-tuning: 6 N
    assert gpu_check_script.flops_per_token(1_000, 10) == 4 * 990 + 6 * 10  # LoRA: 4 N_frozen + 6 N_trainable
    # 500 tokens/s x (4 x 2e9 + 2 x 1e9) FLOPs per token = 5e12 FLOP/s, over a 20e12 peak
    assert gpu_check_script.mfu(500, 2e9, 1e9, 20e12) == pytest.approx(0.25)
    peaks = {"NVIDIA H200": 989, "NVIDIA H100 80GB HBM3": 989, "NVIDIA A100-SXM4-80GB": 312, "NVIDIA L4": 121,
             "Tesla T4": 65, "NVIDIA H100 PCIe": None, "NVIDIA L40S": None, "cpu": None}
    for name, tflops in peaks.items():
        assert gpu_check_script.peak_flops(name) == (tflops and tflops * 1e12), name


def fake_results(method: str, total: int, trainable: int, tokens_per_second: float) -> dict:
    """The fields of a notebook's results file that a run's cost reads."""
    train = {"peak_bytes": 3 * 2**30, "peak_reserved_bytes": 4 * 2**30}
    return {"method": method, "total_params": total, "trainable_params": trainable, "train_seconds": 12.5,
            "train_tokens_per_second": tokens_per_second, "peak_memory": {"train": train}}


def test_run_cost_from_a_results_file():
    cost = gpu_check_script.run_cost(
        fake_results("lora", 1_010_000_000, 10_000_000, 10_000), "NVIDIA H200", 61.0
    )
    assert (
        cost["wall_s"] == 61.0 and cost["train_seconds"] == 12.5 and cost["train_tokens_per_second"] == 10_000
    )
    assert cost["train_peak_allocated_bytes"] == 3 * 2**30 and cost["train_peak_reserved_bytes"] == 4 * 2**30
    assert cost["flops_per_token"] == 4 * 1_000_000_000 + 6 * 10_000_000
    assert cost["mfu"] == pytest.approx(10_000 * 4.06e9 / 989e12) and cost["mfu_note"] is None
    line = gpu_check_script.cost_line(cost)
    assert (
        "10,000 tokens/s" in line
        and "3.00 GiB allocated / 4.00 GiB reserved" in line
        and line.endswith("MFU 4.1%")
    )
    unknown = gpu_check_script.run_cost(fake_results("full", 100, 100, 5.0), "Some GPU", 1.0)
    assert unknown["mfu"] is None and unknown["peak_tflops"] is None and "'Some GPU'" in unknown["mfu_note"]


def write_notebook(path: Path, cells: list) -> Path:
    nbformat.write(new_notebook(cells=cells), path)
    return path


def test_gpu_check_runs_writes_check_json_and_packs_out(tmp_path):
    """The whole flow on CPU (--allow-cpu): both regimes, a passing and a failing notebook, $OUT packed."""
    ok = write_notebook(
        tmp_path / "ok.ipynb",
        [
            new_markdown_cell("## 1. Environment"),
            new_code_cell(
                "# NBVAL_CHECK_OUTPUT\nimport os\nprint('precision', os.environ['COURSE_PRECISION'], 'cap', "
                "os.environ.get('COURSE_GPU_MEMORY_GIB'))\nprint('smoke on:', "
                "os.environ['COURSE_SMOKE'] == '1')"
            ),
        ],
    )
    bad = write_notebook(
        tmp_path / "bad.ipynb",
        [new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('golden check:', False)"), new_code_cell("1 / 0")],
    )
    sources = {p: p.read_bytes() for p in (ok, bad)}
    (tmp_path / "wheels").mkdir()
    results, out = tmp_path / "results", tmp_path / "out"
    done = gpu_check(
        "--allow-cpu",
        cwd=tmp_path,
        OUT=str(out),
        GPU_CHECK_NOTEBOOKS=f"{ok} {bad}",
        GPU_CHECK_WHEELS=str(tmp_path / "wheels"),
        GPU_CHECK_SCRATCH=str(tmp_path / "scratch"),
        GPU_CHECK_RESULTS=str(results),
    )
    assert done.returncode == 1, done.stdout + done.stderr  # bad.ipynb failed
    for regime, cap in (("native", "None"), ("t4", "15")):
        text = (results / "cpu" / regime / "check.json").read_text()
        assert machine_paths(text) == [] and str(tmp_path) not in text
        check = json.loads(text)
        assert check["regime"] == regime and check["gpu_slug"] == "cpu" and check["ok"] is False
        assert check["preflight"]["ok"] is True
        assert check["versions"]["transformers"] and check["versions"]["nbclient"]
        assert ("COURSE_GPU_MEMORY_GIB" in check["env"]) == (regime == "t4")
        assert check["env"]["COURSE_RESULTS_DIR"] == f"<results>/cpu/{regime}"  # outside the repository
        runs = check["notebooks"]
        assert runs["ok.ipynb"]["status"] == "ok" and runs["ok.ipynb"]["ok"] is True
        assert runs["ok.ipynb"]["seconds"] > 0 and runs["ok.ipynb"]["error"] is None
        assert runs["bad.ipynb"]["status"] == "failed" and "ZeroDivisionError" in runs["bad.ipynb"]["error"]
        precision = {"native": "auto", "t4": "fp16"}[regime]
        assert check["golden"]["ok.ipynb"] == {"1": f"precision {precision} cap {cap}\nsmoke on: True\n"}
        assert check["golden"]["bad.ipynb"] == {"0": "golden check: False\n"}
        assert check["golden_false"] == ["bad.ipynb cell 0: golden check: False"]
        assert runs["ok.ipynb"]["executed"] == f"<scratch>/executed/{regime}/ok.ipynb"
        assert (tmp_path / "scratch" / "executed" / regime / "ok.ipynb").exists()
    assert {p: p.read_bytes() for p in (ok, bad)} == sources  # the notebooks themselves are untouched
    names = sorted(p.name for p in out.iterdir())
    assert names == ["failed-native-bad.ipynb", "failed-t4-bad.ipynb", "gpu_check.log", "gpu_results.tar.gz"]
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        packed = set(tar.getnames())
    assert {"results/gpu/cpu/native/check.json", "results/gpu/cpu/t4/check.json"} <= packed
    log = (out / "gpu_check.log").read_text()
    assert "preflight passed" in log and "SOME STEPS FAILED OR WERE SKIPPED" in log
    assert re.search(r"\[\d\d:\d\d:\d\d \+ *\d+ s\] 3/4 t4 ok.ipynb: start", log)  # timestamped progress


def test_a_failed_install_runs_nothing_and_says_why(tmp_path):
    fake_wheels(tmp_path / "wheels", ["peft-0.21.2-py3-none-any.whl"])  # not a zip: pip refuses it
    results, out = tmp_path / "results", tmp_path / "out"
    done = gpu_check(
        "--allow-cpu",
        cwd=tmp_path,
        OUT=str(out),
        GPU_CHECK_WHEELS=str(tmp_path / "wheels"),
        GPU_CHECK_SITE=str(tmp_path / "site"),
        GPU_CHECK_SCRATCH=str(tmp_path / "scratch"),
        GPU_CHECK_RESULTS=str(results),
    )
    assert done.returncode == 1
    check = json.loads((results / "cpu" / "native" / "check.json").read_text())
    assert check["preflight"]["ok"] is False and "pip install" in check["preflight"]["error"]
    assert [r["status"] for r in check["notebooks"].values()] == ["skipped"] * 4
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "gpu_results.tar.gz"]
    assert not (tmp_path / "scratch" / "executed").exists()


def test_full_check_records_each_runs_cost(tmp_path):
    """--full on CPU: no COURSE_SMOKE, results in cpu/full/<regime>, the cost from the notebook's results."""
    lora = write_notebook(
        tmp_path / "02_lora.ipynb",
        [new_code_cell(
            "import json, os, pathlib\n"
            "assert 'COURSE_SMOKE' not in os.environ\n"
            f"results = {fake_results('lora', 1_010_000_000, 10_000_000, 2_000.0)!r}\n"
            "pathlib.Path(os.environ['COURSE_RESULTS_DIR'], 'lora.json').write_text(json.dumps(results))"
        )],
    )
    (tmp_path / "wheels").mkdir()
    results = tmp_path / "results"
    done = gpu_check(
        "--allow-cpu", "--full",
        cwd=tmp_path,
        GPU_CHECK_NOTEBOOKS=str(lora),
        GPU_CHECK_REGIMES="native",
        GPU_CHECK_WHEELS=str(tmp_path / "wheels"),
        GPU_CHECK_SCRATCH=str(tmp_path / "scratch"),
        GPU_CHECK_RESULTS=str(results),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (results / "cpu" / "native").exists()  # the smoke check's folder is left alone
    check = json.loads((results / "cpu" / "full" / "native" / "check.json").read_text())
    assert check["settings"]["mode"] == "full" and "COURSE_SMOKE" not in check["env"]
    cost = check["notebooks"]["02_lora.ipynb"]["cost"]
    assert cost["train_tokens_per_second"] == 2_000.0 and cost["trainable_params"] == 10_000_000
    assert cost["wall_s"] == check["notebooks"]["02_lora.ipynb"]["seconds"]
    assert cost["mfu"] is None and cost["mfu_note"] == "no dense bf16/fp16 peak listed for 'cpu'"
    assert "2,000 tokens/s" in done.stdout and "3.00 GiB allocated / 4.00 GiB reserved" in done.stdout


def test_check_files_name_no_machine_paths(tmp_path, monkeypatch):
    """check.json labels the scratch folder, wheels' site and Python install; the notebooks get real paths."""
    scratch, site = tmp_path / "scratch", tmp_path / "site"
    monkeypatch.setenv("GPU_CHECK_SCRATCH", str(scratch))
    monkeypatch.setenv("GPU_CHECK_SITE", str(site))
    monkeypatch.setenv("GPU_CHECK_RESULTS", str(ROOT / "results" / "gpu"))
    monkeypatch.setenv("PYTHONPATH", f"{site}:{site}")
    check = gpu_check_script.Check("Fake GPU", "fake-gpu", cuda=False)
    # write nothing in the repo
    monkeypatch.setattr(check, "results_dir", lambda regime: tmp_path / "results" / regime)
    packages, stdlib = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]
    error = (
        f'File "{packages}/torch/nn/modules/module.py", line 1\n'
        f'File "{site}/transformers/trainer.py", line 2\n'
        f'File "{stdlib}/asyncio/base_events.py", line 3\nin {Path.home()}/notes '
        f"and {ROOT}/helpers/fit.py"
    )
    for run in check.runs:
        run.record = {"status": "failed", "ok": False, "seconds": 1.0, "error": error,
                      "executed": str(check.executed_path(run))}
    check.write_checks()
    for regime in ("native", "t4"):
        text = (tmp_path / "results" / regime / "check.json").read_text()
        assert machine_paths(text) == [] and str(tmp_path) not in text
        saved = json.loads(text)
        # in the repository: relative
        assert saved["env"]["COURSE_RESULTS_DIR"] == f"results/gpu/fake-gpu/{regime}"
        assert saved["env"]["COURSE_OUTPUT_DIR"] == f"<scratch>/{regime}/outputs"
        assert saved["env"]["COURSE_CACHE_DIR"] == "<scratch>/cache"
        assert saved["pythonpath"] == "<site>:<site>"
        run = saved["notebooks"]["02_lora.ipynb"]
        assert run["executed"] == f"<scratch>/executed/{regime}/02_lora.ipynb"
        # the interpreter's folders: <site-packages>, <stdlib> or inside the repository
        lines = run["error"].splitlines()
        assert lines[0].endswith('/torch/nn/modules/module.py", line 1') and lines[2].endswith(
            '/asyncio/base_events.py", line 3'
        )
        assert (
            lines[1] == 'File "<site>/transformers/trainer.py", line 2'
            and lines[3] == "in ~/notes and helpers/fit.py"
        )
    # as it was
    assert check.runs[0].env["COURSE_OUTPUT_DIR"] == str(scratch.resolve() / "native" / "outputs")


def test_committed_gpu_results_hold_no_machine_paths():
    files = sorted((ROOT / "results" / "gpu").glob("**/*.json"))
    assert files
    found = {str(path.relative_to(ROOT)): machine_paths(path.read_text()) for path in files}
    assert {name: paths for name, paths in found.items() if paths} == {}


def test_runs_past_the_deadline_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_BUDGET_S", "0")
    monkeypatch.setenv("GPU_CHECK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("GPU_CHECK_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("GPU_CHECK_REGIMES", "t4")
    check = gpu_check_script.Check("Fake GPU 80GB", gpu_check_script.slugify("Fake GPU 80GB"), cuda=False)
    check.preflight = {"ok": True, "error": None}
    check.prepare()
    check.run_all()
    assert check.slug == "fake-gpu-80gb"
    saved = json.loads((tmp_path / "results" / "fake-gpu-80gb" / "t4" / "check.json").read_text())
    assert saved["ok"] is False
    assert [r["status"] for r in saved["notebooks"].values()] == ["skipped"] * 4
    assert all("deadline" in r["error"] for r in saved["notebooks"].values())
    assert check.report() is False


def run_course(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "run_course.py"), *args],
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_course_out_and_summary(tmp_path):
    source = write_notebook(
        tmp_path / "tiny.ipynb",
        [
            new_markdown_cell("## 1. A section"),
            new_code_cell("x = 41"),
            new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('answer:', x + 1 == 42)"),
        ],
    )
    before = source.read_bytes()
    done = run_course(
        "--out",
        str(tmp_path / "out"),
        "--summary",
        str(tmp_path / "summary.json"),
        "--no-compare",
        str(source),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert source.read_bytes() == before  # executed elsewhere, the source is untouched
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is True
    [entry] = summary["notebooks"]
    assert entry["notebook"] == "tiny.ipynb" and entry["status"] == "ok" and entry["ok"] is True
    assert entry["error"] is None and entry["seconds"] > 0
    assert entry["saved"] == str(tmp_path / "out" / "tiny.ipynb")
    assert summary["checks"] == {"tiny.ipynb": {"2": "answer: True\n"}}
    executed = nbformat.read(tmp_path / "out" / "tiny.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"] == "answer: True\n"
    assert "[1/1] Running" in done.stdout and "A section" in done.stdout  # progress: notebook and section
    assert "Comparison of the results" not in done.stdout  # --no-compare


def test_run_course_stops_at_a_failure_unless_keep_going(tmp_path):
    never_ran = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint('stale')", execution_count=9,
                              outputs=[new_output("stream", name="stdout", text="stale: committed output\n")])
    bad = write_notebook(
        tmp_path / "bad.ipynb",
        [
            new_code_cell("print('before the error')", metadata={"tags": ["nbval-check-output"]}),
            new_code_cell("1/0"),
            never_ran,
        ],
    )
    good = write_notebook(tmp_path / "good.ipynb", [new_code_cell("print('fine')")])
    before = bad.read_bytes()
    for keep_going, good_status in ((False, "skipped"), (True, "ok")):
        out, summary_path = tmp_path / f"out-{keep_going}", tmp_path / f"summary-{keep_going}.json"
        flags = ["--keep-going"] if keep_going else []
        done = run_course("--out", str(out), "--summary", str(summary_path), "--no-compare", *flags, str(bad),
                          str(good), cwd=tmp_path)
        assert done.returncode == 1
        summary = json.loads(summary_path.read_text())
        first, second = summary["notebooks"]
        assert first["status"] == "failed" and "ZeroDivisionError" in first["error"]
        # the tagged golden cell; not the stale one after the error
        assert first["checks"] == {"0": "before the error\n"}
        assert nbformat.read(out / "bad.ipynb", as_version=4).cells[0].outputs  # saved as far as it ran
        assert second["status"] == good_status
        assert (out / "good.ipynb").exists() == keep_going
    assert bad.read_bytes() == before


def test_run_course_timeout(tmp_path):
    slow = write_notebook(tmp_path / "slow.ipynb", [new_code_cell("import time\ntime.sleep(120)")])
    done = run_course("--out", str(tmp_path / "out"), "--summary", str(tmp_path / "s.json"), "--no-compare",
                      "--timeout", "3", str(slow), cwd=tmp_path)
    assert done.returncode == 1
    [entry] = json.loads((tmp_path / "s.json").read_text())["notebooks"]
    assert entry["status"] == "timeout" and entry["seconds"] < 60


needs_kit = pytest.mark.skipif(
    not any(KIT.glob("*.whl")), reason="no wheel kit: run bash scripts/gpu_wheels.sh"
)


@needs_kit
def test_wheel_kit_passes_its_check():
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_wheels.sh"), "--check"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout


@needs_kit
def test_wheel_kit_check_catches_two_versions(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    for wheel in KIT.glob("*.whl"):
        (kit / wheel.name).symlink_to(wheel)
    [comm] = kit.glob("comm-*.whl")
    (kit / "comm-0.0.1-py3-none-any.whl").symlink_to(comm.resolve())
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_wheels.sh"), "--check"],
        env=clean_env(KIT_DIR=str(kit)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "ERROR two wheels of comm" in done.stdout


def test_notebook_4_shows_each_full_budget_runs_cost(tmp_path, capsys):
    """Notebook 4 prints what a learner's run cost on the GPU, from check.json's per-notebook cost."""
    from test_precision import run_cells

    from helpers.memory import format_bytes

    cost = gpu_check_script.run_cost(
        fake_results("lora", 1_010_000_000, 10_000_000, 10_000), "NVIDIA H200", 61.0
    )
    check = {
        "gpu": "NVIDIA H200",
        "regime": "native",
        "notebooks": {
            "02_lora.ipynb": {"status": "ok", "cost": cost},
            "03_qlora.ipynb": {"status": "skipped"},
        },
    }
    folder = tmp_path / "results" / "gpu" / "nvidia-h200" / "full" / "native"
    folder.mkdir(parents=True)
    (folder / "check.json").write_text(json.dumps(check))
    run_cells(
        "04_compare.ipynb",
        ["full_checks = sorted("],
        {"ROOT": tmp_path, "json": json, "format_bytes": format_bytes},
    )
    out = capsys.readouterr().out
    assert "NVIDIA H200, native regime (full budget):" in out and "03_qlora.ipynb: skipped" in out
    assert (
        "02_lora.ipynb: 61 s in all, training 12 s at 10,000 tokens/s, "
        "train peak 3.00 GiB allocated, 4.00 GiB reserved, MFU 4%" in out
    )
    run_cells("04_compare.ipynb", ['full_checks = sorted('], {"ROOT": tmp_path / "none", "json": json})
    assert "No full-budget GPU run is committed yet" in capsys.readouterr().out
