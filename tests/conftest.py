"""Shared test helpers."""

import importlib.util
import sys
from types import ModuleType

from helpers import ROOT


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module (the scripts folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
