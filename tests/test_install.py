"""The setup cell's install rule, run in fresh virtual environments: what it installs, what it leaves, when it asks for a restart."""

from __future__ import annotations

import json
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from helpers import ROOT, preflight
from helpers.install import read_pins

PINS = read_pins()


def fake_distribution(site: Path, name: str, version: str, module_version: str | None = None) -> None:
    """Make `name` look installed at `version` in a site-packages folder (and importable if module_version)."""
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


def run_setup(python: Path, imports: tuple[str, ...] = ()) -> dict:
    """Run the setup cell's call, helpers.install.install_missing, with pip replaced by a recorder."""
    code = textwrap.dedent(f"""
        import json, sys
        for name in {list(imports)!r}:
            __import__(name)  # what the kernel imported before the setup cell ran (Colab: psutil)
        from helpers.install import install_missing, RestartNeeded
        calls = []
        def record(command):
            constraints = command[command.index("-c") + 1]
            calls.append({{"command": command, "constraints": open(constraints).read()}})
        try:
            installed = install_missing(run=record)
            restart = None
        except RestartNeeded as err:
            installed, restart = None, str(err)
        print(json.dumps({{"installed": installed, "calls": calls, "restart": restart}}))
    """)
    out = subprocess.run([str(python), "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_colab_like_machine_gets_only_the_missing_and_the_incompatible(tmp_path):
    # Colab-like: its own torch, another psutil (already imported by the kernel), an older transformers, the pinned peft.
    python = fresh_venv(
        tmp_path,
        {"torch": "2.9.0", "psutil": "5.9.5", "transformers": "4.57.1", "peft": PINS["peft"]},
        importable=("psutil",),
    )
    result = run_setup(python, imports=("psutil",))
    expected = [f"{n}=={v}" for n, v in PINS.items() if n not in ("torch", "psutil", "peft")]
    assert result["installed"] == expected
    assert "transformers==" + PINS["transformers"] in expected, "a core library at another minor version is replaced"
    assert result["restart"] is None, "psutil was imported but kept, so no restart is needed"
    [call] = result["calls"]
    assert call["command"][1:4] == ["-m", "pip", "install"]
    assert call["constraints"] == "torch==2.9.0\n", "pip may not upgrade the machine's torch"
    assert not any(arg.startswith("torch") for arg in call["command"])


def test_nothing_to_install_runs_no_pip(tmp_path):
    python = fresh_venv(tmp_path, {name: version for name, version in PINS.items()})
    assert run_setup(python) == {"installed": [], "calls": [], "restart": None}


def test_replacing_an_imported_core_library_asks_for_one_restart(tmp_path):
    python = fresh_venv(tmp_path, {**PINS, "peft": "0.13.0"}, importable=("peft",))
    result = run_setup(python, imports=("peft",))
    assert [c["command"][-1] for c in result["calls"]] == [f"peft=={PINS['peft']}"]
    assert result["restart"].startswith(f"Installed peft=={PINS['peft']}, but this kernel had already imported peft.")
    assert result["restart"].count("un the notebook again") == 1, "one plain instruction"


def test_patch_releases_of_core_libraries_are_accepted(tmp_path):
    major, minor, _ = PINS["transformers"].split(".")
    python = fresh_venv(tmp_path, {**PINS, "transformers": f"{major}.{minor}.99"})
    assert run_setup(python)["installed"] == []


def test_check_pinned_versions_agrees_with_the_install_rule(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("psutil==1.0.0\n# notebooks and tests\npytest==1\n")
    with pytest.warns(UserWarning, match=r"psutil .* \(pinned 1\.0\.0\)"):
        assert "psutil" in preflight.check_pinned_versions(requirements)  # another psutil: a warning, not an error
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
        lines = [line for c in before if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
        assert len([line for line in lines if line.strip()]) <= 8, f"{path.name}: the opening is plumbing, keep it short"


def test_stored_runs_give_the_trainer_no_progress_bar(monkeypatch, tmp_path):
    """In a notebook the Trainer's HTML bar ignores TQDM_DISABLE and is stored as '<IPython.core.display.HTML object>';
    its text bar, silenced, still prints every log line."""
    import transformers.trainer
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from helpers.install import quiet_trainer_progress

    monkeypatch.setattr(transformers.trainer, "DEFAULT_PROGRESS_CALLBACK", NotebookProgressCallback)  # as in Jupyter
    quiet_trainer_progress()
    import torch

    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    kinds = {type(c) for c in trainer.callback_handler.callbacks}
    assert not kinds & {ProgressCallback, NotebookProgressCallback, PrinterCallback}, "no bar and no printed log lines"
