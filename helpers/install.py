"""The notebooks' setup: install what the course needs and the machine lacks, keep the machine's torch.

Standard library only: it runs before any of the course's libraries may be importable.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distributions, packages_distributions, version
from pathlib import Path

from helpers import ROOT

REQUIREMENTS = ROOT / "requirements.txt"
_RUNTIME_MARKER = "# notebooks and tests"  # requirements.txt lists the test tools after this line
# The libraries whose APIs the lessons call: another minor version may rename what the notebooks use.
CORE = ("transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
_NEVER_INSTALLED = ("torch",)  # Colab's and your own CUDA build of torch stay as they are
# The libraries whose versions go into every results file.
_TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


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


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries this course uses ('not installed' when missing)."""
    versions = {"python": platform.python_version()}
    for package in _TRACKED_PACKAGES:
        versions[package] = installed_version(package) or "not installed"
    return versions


def _same_minor(found: str, pinned: str) -> bool:
    """True when two versions share major.minor ('5.24.1' and '5.24.0'; '2.13.0+cpu' and '2.13.0')."""
    return found.split("+")[0].split(".")[:2] == pinned.split(".")[:2]


def is_compatible(name: str, found: str | None, pinned: str) -> bool:
    """Whether an installed version will do: core libraries need the pin's major.minor, others any version."""
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


def _versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name."""
    return {dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in distributions()}


def _changed_and_loaded(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Distributions whose version changed (or that were removed) and whose modules this process imported."""
    modules_of: dict[str, list[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), []).append(module)
    changed = [name for name, found in before.items() if after.get(name) != found]
    return sorted(
        name
        for name in changed
        if any(m in sys.modules for m in modules_of.get(name, [name.replace("-", "_")]))
    )


def install_missing(
    path: str | Path = REQUIREMENTS, run: Callable[[list[str]], object] = subprocess.check_call
) -> list[str]:
    """Install what _plan_installs() lists, with pip held to the installed torch; return what was installed.

    Raises RestartNeeded, once, if pip replaced any distribution (a pin or a dependency it upgraded on the
    way) whose modules the kernel had already imported; RuntimeError with the fix if pip fails.
    """
    todo = _plan_installs(path)
    if not todo:
        return []
    before = _versions()
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        torch_version = installed_version("torch")
        constraints.write_text(f"torch=={torch_version}\n" if torch_version else "")  # never upgrade torch
        print("Installing:", " ".join(todo), flush=True)
        try:
            run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(constraints), *todo])
        except subprocess.CalledProcessError as error:
            held = (
                f"torch {torch_version} (this machine's, which the course never replaces)"
                if torch_version
                else "no torch"
            )
            raise RuntimeError(
                f"pip could not install {' '.join(todo)} "
                f"(exit {error.returncode}; its own message is above). It was held to {held}. "
                "Fix: if a pin needs another torch, install the torch it names first "
                "(pip install torch==<version>) or use the versions in requirements.txt on a machine of "
                "your own; if the network failed, run this cell again."
            ) from None
    loaded = _changed_and_loaded(before, _versions())
    if loaded:
        raise RestartNeeded(
            f"Installed {', '.join(todo)}, but this kernel had already imported {', '.join(loaded)}, "
            "which changed. Restart it once (Kernel > Restart; in Colab: Runtime > Restart session) "
            "and run the notebook again from the top."
        )
    return todo


def setup_notebook() -> None:
    """The notebooks' setup: install what is missing (never torch), then quiet output that teaches nothing."""
    install_missing()  # says once if a restart is needed
    # plain-text progress bars without ipywidgets
    warnings.filterwarnings("ignore", message="IProgress not found")
    # a deprecation warning raised inside peft and trl
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated")
    # optional CPU kernel from the hub
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import datasets  # only now: install_missing may just have installed it

    datasets.disable_progress_bars()  # per-row "Map" bars add nothing for a few thousand examples
    if os.environ.get("TQDM_DISABLE"):  # tqdm's own switch, set by scripts/run_course.py for stored runs
        quiet_trainer_progress()


def quiet_trainer_progress() -> None:
    """No Trainer progress bar: the HTML one ignores TQDM_DISABLE, the text one still prints each log line.

    In a notebook the Trainer shows an HTML table that a stored run saves as
    "<IPython.core.display.HTML object>"; the loss curve is plotted from trainer.state.log_history instead.
    """
    import transformers.trainer
    from transformers.trainer_callback import TrainerCallback

    # the base class: does nothing, prints nothing
    transformers.trainer.DEFAULT_PROGRESS_CALLBACK = TrainerCallback
