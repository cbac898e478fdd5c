"""The notebooks' setup: install what the course needs and the machine lacks, keep the machine's torch.

Standard library only: it runs before any of the course's libraries may be importable.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from helpers import ROOT

REQUIREMENTS = ROOT / "requirements.txt"
_RUNTIME_MARKER = "# notebooks and tests"  # requirements.txt lists the test tools after this line
# The libraries whose APIs the lessons call: another minor version may rename what the notebooks use.
CORE = ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
_NEVER_INSTALLED = ("torch",)  # Colab's and your own CUDA build of torch stay as they are


class RestartNeeded(RuntimeError):
    """Packages the running kernel had already imported were replaced: restart it once, then rerun."""


def read_pins(path: str | Path = REQUIREMENTS) -> dict[str, str]:
    """The name==version pins of the runtime libraries in requirements.txt (not the test tools)."""
    text = Path(path).read_text(encoding="utf-8").split(_RUNTIME_MARKER)[0]
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, pinned = line.split("==", 1)
            pins[name.strip()] = pinned.strip()
    return pins


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _same_minor(found: str, pinned: str) -> bool:
    """True when two versions share major.minor ('5.24.1' and '5.24.0'; '2.13.0+cpu' and '2.13.0')."""
    return found.split("+")[0].split(".")[:2] == pinned.split(".")[:2]


def is_compatible(name: str, found: str | None, pinned: str) -> bool:
    """Whether an installed version will do: core libraries need the pin's major.minor, the rest only need to exist."""
    if found is None:
        return False
    return _same_minor(found, pinned) if name in CORE else True


def _plan_installs(path: str | Path = REQUIREMENTS) -> list[str]:
    """The pins to install: missing packages, and core libraries at another minor version. Never torch."""
    return [
        f"{name}=={pinned}"
        for name, pinned in read_pins(path).items()
        if name not in _NEVER_INSTALLED and not is_compatible(name, installed_version(name), pinned)
    ]


def install_missing(
    path: str | Path = REQUIREMENTS, run: Callable[[list[str]], object] = subprocess.check_call
) -> list[str]:
    """Install what plan_installs() lists, with pip held to the installed torch; return what was installed.

    Raises RestartNeeded, once, if a package the kernel had already imported was replaced.
    """
    todo = _plan_installs(path)
    if not todo:
        return []
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        torch_version = installed_version("torch")
        constraints.write_text(f"torch=={torch_version}\n" if torch_version else "")  # never upgrade torch
        print("Installing:", " ".join(todo), flush=True)
        run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(constraints), *todo])
    loaded = [pin.split("==")[0] for pin in todo if pin.split("==")[0].replace("-", "_") in sys.modules]
    if loaded:
        raise RestartNeeded(
            f"Installed {', '.join(todo)}, but this kernel had already imported {', '.join(loaded)}. Restart it once "
            "(Kernel > Restart; in Colab: Runtime > Restart session) and run the notebook again from the top."
        )
    return todo


def setup_notebook() -> None:
    """The notebooks' setup: install what is missing (never torch), then quiet output that teaches nothing."""
    install_missing()  # says once if a restart is needed
    warnings.filterwarnings("ignore", message="IProgress not found")  # plain-text progress bars without ipywidgets
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated")  # raised inside peft/trl
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # optional CPU kernel from the hub
    import datasets  # only now: install_missing may just have installed it

    datasets.disable_progress_bars()  # per-row "Map" bars add nothing for a few thousand examples
    if os.environ.get("TQDM_DISABLE"):  # tqdm's own switch, set by scripts/run_course.py for stored runs
        quiet_trainer_progress()


def quiet_trainer_progress() -> None:
    """No Trainer progress bar at all: its HTML one ignores TQDM_DISABLE, and its text one still prints each log line.

    In a notebook the Trainer shows an HTML table that a stored run saves as "<IPython.core.display.HTML object>";
    the loss curve is plotted from trainer.state.log_history instead.
    """
    import transformers.trainer
    from transformers.trainer_callback import TrainerCallback

    transformers.trainer.DEFAULT_PROGRESS_CALLBACK = TrainerCallback  # the base class: does nothing, prints nothing
