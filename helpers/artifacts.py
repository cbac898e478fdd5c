"""Saving folders (adapters, models) so that an interrupted save never replaces a good earlier one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shown(path: str | Path) -> str:
    """A path as the notebooks print it: relative to the course folder when inside it, so outputs hold no machine paths."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to save into; it replaces path only if the block completes, else the old folder stays."""
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
