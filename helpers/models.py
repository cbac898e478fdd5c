"""Run profiles: which model a run trains, and where from_pretrained loads it from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.stand_in import TINY_MODEL_DIR, build_random_llama_1b, is_current_build

# The default folder the stand-in models are built in.
CACHE_DIR = Path.home() / ".cache" / "llama-finetuning-course"
DEFAULT_HUB_ID = "meta-llama/Llama-3.2-1B-Instruct"  # the "hub" profile's model unless MODEL_ID names another
_PROFILES = ("hub", "tiny", "llama-3.2-1b-random")
_ALIASES = {"llama-3.2-1b": "hub"}  # the hub profile's earlier name


@dataclass(frozen=True)
class ModelChoice:
    """What a run trains: its profile, where from_pretrained loads it, and an honest description."""

    profile: str
    path: str
    name: str
    description: str
    accuracy_means_something: bool


def resolve_profile(requested: str, cuda_available: bool | None = None) -> str:
    """The run profile: the one requested, or for 'auto' the hub model on a CUDA GPU, else the tiny one."""
    profile = _ALIASES.get(requested, requested)
    if profile == "auto":
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        profile = "hub" if cuda_available else "tiny"
    if profile not in _PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}. Choose one of {', '.join(_PROFILES)} or 'auto' "
            "('hub': MODEL_ID, any chat model on the hub or in a local folder, "
            "Llama 3.2 1B Instruct by default) "
            "(set PROFILE in the parameters cell, or the COURSE_PROFILE environment variable it reads)."
        )
    return profile


def choose_model(
    profile: str, model_id: str | None = None, cache_dir: str | Path | None = None
) -> ModelChoice:
    """Where to load a profile's model from, building the local ones (in cache_dir) on first use."""
    if profile == "hub":
        hub_id = model_id or DEFAULT_HUB_ID
        where = "a local folder" if Path(hub_id).is_dir() else "from the Hugging Face hub"
        return ModelChoice(profile, hub_id, hub_id, f"{hub_id} ({where}, pretrained weights)", True)
    if profile == "tiny":
        if not (TINY_MODEL_DIR / "model.safetensors").exists():
            raise FileNotFoundError(
                f"The tiny model is missing from {TINY_MODEL_DIR}. "
                "Rebuild it with: python scripts/build_tiny_model.py"
            )
        return ModelChoice(
            profile,
            str(TINY_MODEL_DIR),
            "tiny-llama-support (local)",
            "tiny Llama (4 M parameters, same architecture family), briefly pretrained on this course's text",
            True,
        )
    if profile == "llama-3.2-1b-random":
        path = Path(cache_dir or CACHE_DIR) / "llama-3.2-1b-random"
        if not is_current_build(path):
            if path.exists():
                print(f"{path} is from an older build of this profile: rebuilding it.")
            build_random_llama_1b(path)
        return ModelChoice(
            profile,
            str(path),
            "llama-3.2-1b-random (local)",
            "Llama 3.2 1B architecture with RANDOM weights: real memory and speed, meaningless accuracy",
            False,
        )
    raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(_PROFILES)}.")
