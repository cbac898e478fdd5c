"""The setup cell's install rule, in fresh virtual environments: what it installs and when it restarts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import torch

from helpers import ROOT, preflight
from helpers.install import package_versions, read_pins

PINS = read_pins()


def fake_distribution(site: Path, name: str, version: str, module_version: str | None = None) -> None:
    """Make `name` look installed at `version` in a site-packages folder (importable if module_version)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if module_version is not None:
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"__version__ = {module_version!r}\n")


def fresh_venv(tmp_path: Path, packages: dict[str, str], importable: tuple[str, ...] = ()) -> Path:
    """A new virtual environment (no pip) holding only the given fake distributions; returns its python."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    site = next(env.glob("lib/python3*/site-packages"))
    for name, version in packages.items():
        fake_distribution(site, name, version, version if name in importable else None)
    return env / "bin" / "python"


def run_setup(
    python: Path, imports: tuple[str, ...] = (), also_upgraded: dict | None = None, fail: bool = False
) -> dict:
    """Run the setup cell's call, helpers.install.install_missing, with pip replaced by a fake one.

    The fake pip records its command and installs what it names (and also_upgraded, as pip upgrades
    dependencies on the way) by rewriting the distributions' metadata; with fail=True it exits 1 like a pip
    that cannot resolve.
    """
    code = textwrap.dedent(f"""
        import glob, json, os, shutil, subprocess, sys, sysconfig
        for name in {list(imports)!r}:
            __import__(name)  # what the kernel imported before the setup cell ran (Colab: psutil)
        from helpers.install import install_missing, RestartNeeded
        calls = []
        def fake_pip(command):
            constraints = command[command.index("-c") + 1]
            calls.append({{"command": command, "constraints": open(constraints).read()}})
            if {fail!r}:
                raise subprocess.CalledProcessError(1, command)
            site = sysconfig.get_paths()["purelib"]
            pins = [a.split("==") for a in command if "==" in a] + list({also_upgraded or {}!r}.items())
            for name, version in pins:
                for old in glob.glob(os.path.join(site, name + "-*.dist-info")):
                    shutil.rmtree(old)
                info = os.path.join(site, name + "-" + version + ".dist-info")
                os.makedirs(info)
                metadata = f"Metadata-Version: 2.1\\nName: {{name}}\\nVersion: {{version}}\\n"
                open(os.path.join(info, "METADATA"), "w").write(metadata)
        try:
            installed, restart, error = install_missing(run=fake_pip), None, None
        except RestartNeeded as err:
            installed, restart, error = None, str(err), None
        except RuntimeError as err:
            installed, restart, error = None, None, str(err)
        print(json.dumps({{"installed": installed, "calls": calls, "restart": restart, "error": error}}))
    """)
    out = subprocess.run([str(python), "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_colab_like_machine_gets_only_the_missing_and_the_incompatible(tmp_path):
    # Colab-like: its own torch, another psutil (already imported by the kernel),
    # an older transformers, the pinned peft.
    python = fresh_venv(
        tmp_path,
        {"torch": "2.9.0", "psutil": "5.9.5", "transformers": "4.57.1", "peft": PINS["peft"]},
        importable=("psutil",),
    )
    result = run_setup(python, imports=("psutil",))
    expected = [f"{n}=={v}" for n, v in PINS.items() if n not in ("torch", "psutil", "peft")]
    assert result["installed"] == expected
    assert "transformers==" + PINS["transformers"] in expected, (
        "a core library at another minor version is replaced"
    )
    assert result["restart"] is None, "psutil was imported but kept, so no restart is needed"
    [call] = result["calls"]
    assert call["command"][1:4] == ["-m", "pip", "install"]
    assert call["constraints"] == "torch==2.9.0\n", "pip may not upgrade the machine's torch"
    assert not any(arg.startswith("torch") for arg in call["command"])


def test_nothing_to_install_runs_no_pip(tmp_path):
    python = fresh_venv(tmp_path, {name: version for name, version in PINS.items()})
    assert run_setup(python) == {"installed": [], "calls": [], "restart": None, "error": None}


def test_replacing_an_imported_core_library_asks_for_one_restart(tmp_path):
    python = fresh_venv(tmp_path, {**PINS, "peft": "0.13.0"}, importable=("peft",))
    result = run_setup(python, imports=("peft",))
    assert [c["command"][-1] for c in result["calls"]] == [f"peft=={PINS['peft']}"]
    assert result["restart"].startswith(
        f"Installed peft=={PINS['peft']}, but this kernel had already imported peft,"
    )
    assert result["restart"].count("un the notebook again") == 1, "one plain instruction"


def test_a_dependency_pip_upgraded_under_an_imported_module_asks_for_a_restart(tmp_path):
    """Not only the pins: pip may upgrade numpy or pyarrow on the way; if the kernel imported it, restart."""
    python = fresh_venv(tmp_path, {**PINS, "peft": "0.13.0", "numpy": "1.26.0"}, importable=("numpy",))
    result = run_setup(python, imports=("numpy",), also_upgraded={"numpy": "2.3.0"})
    assert "already imported numpy, which changed" in result["restart"]
    quiet = run_setup(
        fresh_venv(tmp_path / "b", {**PINS, "peft": "0.13.0", "numpy": "1.26.0"}, importable=("numpy",)),
        imports=("numpy",),
    )
    assert quiet["restart"] is None, "numpy imported but left alone: no restart"


def test_a_failed_pip_install_is_explained_with_the_fix(tmp_path):
    python = fresh_venv(tmp_path, {**PINS, "torch": "2.9.0", "peft": "0.13.0"})
    result = run_setup(python, fail=True)
    assert result["error"].startswith(
        f"pip could not install peft=={PINS['peft']} (exit 1; its own message is above)"
    )
    assert "held to torch 2.9.0" in result["error"] and "Fix:" in result["error"]


def test_patch_releases_of_core_libraries_are_accepted(tmp_path):
    major, minor, _ = PINS["transformers"].split(".")
    python = fresh_venv(tmp_path, {**PINS, "transformers": f"{major}.{minor}.99"})
    assert run_setup(python)["installed"] == []


def test_check_pinned_versions_agrees_with_the_install_rule(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("psutil==1.0.0\n# notebooks and tests\npytest==1\n")
    with pytest.warns(UserWarning, match=r"psutil .* \(pinned 1\.0\.0\)"):
        # another psutil: a warning, not an error
        assert "psutil" in preflight.check_pinned_versions(requirements)
    requirements.write_text("peft==0.13.0\n")
    with pytest.raises(RuntimeError, match=r"peft 0\.21\.2 \(pinned 0\.13\.0\)"):
        preflight.check_pinned_versions(requirements)


def test_the_setup_cells_call_the_install_rule_in_a_few_lines():
    for path in sorted((ROOT / "notebooks").glob("0*_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        setup = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
        assert "setup_notebook()" in setup, path.name
        assert "pip" not in setup, f"{path.name}: pip belongs to helpers.install"
        before = cells[: next(i for i, c in enumerate(cells) if "PROFILE = " in "".join(c["source"]))]
        lines = [
            line for c in before if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
        ]
        assert len([line for line in lines if line.strip()]) <= 16, (
            f"{path.name}: the opening is plumbing, keep it short"
        )


def setup_cell() -> str:
    """Notebook 1's setup cell (the four notebooks share it)."""
    cells = json.loads((ROOT / "notebooks" / "01_full_finetuning.ipynb").read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def run_setup_cell(folder: Path, repo_url: str | None) -> subprocess.CompletedProcess:
    """The setup cell in a new process (a fresh kernel) in folder, outside the course, as Colab's /content."""
    code = setup_cell().replace("setup_notebook()  #", "print('ROOT', ROOT, 'CWD', Path.cwd())  #")
    code += "\nimport helpers\nprint('HELPERS', Path(helpers.__file__).parent.parent)\n"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(folder),
        **({"COURSE_REPO_URL": repo_url} if repo_url else {}),
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_setup_cell_clones_the_course_once_and_finds_it_after_a_restart(tmp_path):
    """Colab starts in /content, outside the course; after "Restart session" it is back there."""
    absent = run_setup_cell(tmp_path, None)
    assert absent.returncode != 0 and "set COURSE_REPO_URL (README, Colab)" in absent.stderr
    url = f"file://{ROOT}"
    first = run_setup_cell(tmp_path, url)
    assert first.returncode == 0, first.stderr
    clone = tmp_path / ROOT.name
    assert f"ROOT {clone} CWD {clone / 'notebooks'}" in first.stdout and f"HELPERS {clone}" in first.stdout
    again = run_setup_cell(tmp_path, url)  # a new process in the same folder: found, not cloned again
    assert again.returncode == 0 and f"ROOT {clone}" in again.stdout and "Cloning" not in again.stderr


def test_stored_runs_give_the_trainer_no_progress_bar(monkeypatch, tmp_path):
    """In a notebook the Trainer's HTML bar ignores TQDM_DISABLE; its silenced text bar prints every log line.

    The HTML bar is stored as '<IPython.core.display.HTML object>'.
    """
    import transformers.trainer
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from helpers.install import quiet_trainer_progress

    # as in Jupyter
    monkeypatch.setattr(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK", NotebookProgressCallback)
    quiet_trainer_progress()
    import torch

    model = torch.nn.Linear(2, 2)
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    kinds = {type(c) for c in trainer.callback_handler.callbacks}
    assert not kinds & {ProgressCallback, NotebookProgressCallback, PrinterCallback}, (
        "no bar and no printed log lines"
    )


def test_package_versions():
    versions = package_versions()
    expected = {"python", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"}
    assert set(versions) == expected
    assert re.match(r"\d+\.\d+", versions["python"])
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert all(isinstance(v, str) and v for v in versions.values())
