"""Saving folders (adapters, models) so that an interrupted save never replaces a good earlier one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import ROOT


def shown(path: str | Path) -> str:
    """A path as printed: relative to the course folder when inside it, so outputs hold no machine paths."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to save into; it replaces path only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if not tmp.is_dir() or not any(tmp.iterdir()):
            raise RuntimeError(f"Saving to {shown(tmp)} wrote nothing; {shown(path)} was left as it was.")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def dir_size_bytes(path: str | Path) -> int:
    """Total size in bytes of the files under a directory (or of one file), e.g. a saved model or adapter."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Nothing at {path}: save the model or adapter there first.")
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())  # follows symlinks
