"""Before loading or training: describe the run, and check model access and the pinned versions."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from packaging.version import Version

from helpers.checks import check_report_to
from helpers.hardware import Hardware, detect_hardware
from helpers.install import CORE, REQUIREMENTS, installed_version, is_compatible, package_versions, read_pins
from helpers.models import DEFAULT_HUB_ID, ModelChoice, choose_model, resolve_profile

_TOKEN_HELP = (
    "create a token with read access at https://huggingface.co/settings/tokens, then run `hf auth login` "
    "in a terminal (or set the HF_TOKEN environment variable; in Colab: the key icon > Secrets > HF_TOKEN "
    "with 'Notebook access' on), then re-run this cell"
)
_FINE_GRAINED_HELP = (
    "your token is fine-grained and lacks "
    "'Read access to contents of all public gated repos you can access'. "
    "Tick that box in the token's settings at https://huggingface.co/settings/tokens "
    "(or create a classic 'Read' token), then re-run this cell"
)

class ModelAccessError(RuntimeError):
    """The model cannot be downloaded from the Hugging Face hub; the message says why and how to fix it."""


# ---------------------------------------------------------------------------
# Model access
# ---------------------------------------------------------------------------


def check_model_access(repo_id: str) -> str:
    """Check the model can be loaded before loading it: 'local', 'cache' or 'hub', or ModelAccessError.

    The token (HF_TOKEN or `hf auth login`) is only handed to huggingface_hub: it is never printed or written.
    """
    if Path(repo_id).is_dir():
        return "local"
    url = f"https://huggingface.co/{repo_id}"
    if huggingface_hub.is_offline_mode():
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return "cache"
        raise ModelAccessError(
            f"{repo_id} is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1). "
            "Fix: connect to the internet, unset HF_HUB_OFFLINE and run this cell once to download it "
            "(it is then cached), or use COURSE_PROFILE=tiny, which needs no download."
        )
    token = huggingface_hub.get_token()
    try:
        huggingface_hub.auth_check(repo_id, token=token)
    except GatedRepoError as err:
        raise ModelAccessError(_gated_message(repo_id, url, token, err)) from None
    except RepositoryNotFoundError:
        hint = "check the spelling (e.g. meta-llama/Llama-3.2-1B-Instruct)"
        if token is None:
            hint += ", and if the repository is private or gated, log in: " + _TOKEN_HELP
        raise ModelAccessError(
            f"{repo_id} was not found on the Hugging Face hub ({url}). Fix: {hint}."
        ) from None
    except HfHubHTTPError as err:
        raise ModelAccessError(
            f"The hub answered {_status(err)} for {repo_id}. Fix: retry in a minute; if it persists, check "
            "https://status.huggingface.co."
        ) from None
    except Exception as err:  # connection refused, DNS, timeouts, proxies, OfflineModeIsEnabled
        raise ModelAccessError(
            f"Could not reach https://huggingface.co to check {repo_id} ({type(err).__name__}). "
            "Fix: check the internet connection (and proxy settings), or, "
            "if the model was downloaded before, set HF_HUB_OFFLINE=1 to use the cache; "
            "COURSE_PROFILE=tiny needs no download."
        ) from None
    return "hub"


def _status(err: HfHubHTTPError) -> int | None:
    """The HTTP status code of a hub error, or None."""
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _gated_message(repo_id: str, url: str, token: str | None, err: GatedRepoError) -> str:
    """Say which of the gated-access problems this is, and its fix."""
    start = f"{repo_id} is a gated model: "
    server = (err.server_message or str(err)).lower()
    if token is None:
        return (
            start
            + f"you are not logged in. Fix: (1) open {url}, sign in and accept the licence (one approval "
            f"covers the Llama 3.2 family); (2) {_TOKEN_HELP}."
        )
    if _status(err) == 401:
        return (
            start + "the hub did not accept your token (expired, revoked or mistyped?). Fix: check it with "
            f"`hf auth whoami`; if that fails, {_TOKEN_HELP}."
        )
    if "awaiting" in server or "pending" in server:
        return (
            start + f"your access request is still pending review by the authors. Fix: wait for the e-mail "
            f"that grants access (see the status at {url}), then re-run this cell; "
            "meanwhile COURSE_PROFILE=tiny runs every notebook without it."
        )
    if "fine-grained" in server or _fine_grained_without_gated_read(token):
        return start + _FINE_GRAINED_HELP + "."
    return (
        start + f"your account has no access yet. Fix: open {url} while signed in as the account of your "
        "token (`hf auth whoami` shows which), accept the licence and wait for approval; "
        "if you already did, the request may be pending or rejected (the model page says which); "
        "a fine-grained token also needs "
        "'Read access to contents of all public gated repos you can access'. Then re-run this cell."
    )


def _fine_grained_without_gated_read(token: str) -> bool:
    """Whether the token is fine-grained without the 'public gated repos' permission (False if unknown)."""
    try:
        access = huggingface_hub.whoami(token=token)["auth"]["accessToken"]
    except Exception:
        return False
    return access.get("role") == "fineGrained" and not access.get("fineGrained", {}).get("canReadGatedRepos")


# ---------------------------------------------------------------------------
# Library versions
# ---------------------------------------------------------------------------


def check_pinned_versions(path: str | Path = REQUIREMENTS) -> dict[str, str]:
    """Compare installed and imported versions with requirements.txt; return the installed ones or raise.

    The rule is helpers.install's: core libraries need the pin's major.minor, the others only need to be
    installed (another version is a warning), and torch is never replaced.
    """
    installed, problems, warn = {}, [], []
    for name, pinned in read_pins(path).items():
        found = installed_version(name)
        if found is None:
            problems.append(f"{name} is not installed (pinned {pinned})")
            continue
        installed[name] = found
        module = sys.modules.get(name.replace("-", "_"))
        loaded = getattr(module, "__version__", None)
        if loaded and Version(loaded).public != Version(found).public:
            problems.append(f"{name} {loaded} is imported but {found} is installed: restart the kernel")
        elif name in CORE and not is_compatible(name, found, pinned):
            problems.append(f"{name} {found} (pinned {pinned})")
        elif Version(found).public != Version(pinned).public:  # 2.13.0+cpu counts as 2.13.0
            warn.append(f"{name} {found} (pinned {pinned})")
    if warn:
        warnings.warn(
            f"Not the tested version: {', '.join(warn)}. Usually fine (e.g. Colab's own torch); if something "
            "breaks, install the pins.",
            stacklevel=2,
        )
    if problems:
        raise RuntimeError(
            "The installed libraries differ from the tested set in requirements.txt: "
            + "; ".join(problems)
            + ". Fix: pip install -r requirements.txt, then restart the kernel (Kernel > Restart, in Colab: "
            "Runtime > Restart session) so the new versions are the ones imported."
        )
    return installed


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------



@dataclass
class Run:
    """What describe_run resolved: the profile, the model to load, the hardware and the two folders."""

    profile: str
    choice: ModelChoice
    hardware: Hardware
    results_dir: Path
    output_dir: Path


def describe_run(
    *,
    profile: str,
    model_id: str | None,
    results_dir: str | Path | None,
    output_dir: str | Path | None,
    precision: str | None = "auto",
    gpu_memory_gib: float | str | None = None,
    cache_dir: str | Path | None = None,
    report_to: str | None = None,
) -> Run:
    """Resolve profile, model, hardware and folders; print them and the versions; check what can be checked.

    The arguments are the parameters cell's values;
    None folders mean results/ and outputs/ in the course folder. A report_to tracker that is not installed
    or not logged in fails here, before anything loads.
    """
    root = REQUIREMENTS.parent
    hardware = detect_hardware(precision, gpu_memory_gib)
    profile = resolve_profile(profile)
    choice = choose_model(profile, model_id, cache_dir)
    print(f"Profile   : {profile}")
    print(f"Model     : {choice.description}")
    print(f"Hardware  : {hardware.describe()}")
    print(f"Precision : {hardware.precision.name}")
    print("Versions  : " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    check_pinned_versions()  # names the fix if the libraries differ from the tested set in requirements.txt
    if profile != "hub":
        print("NOTE: outputs below come from a stand-in model, not from Llama 3.2 1B's pretrained weights.")
    elif not Path(choice.path).is_dir():
        # gated model: says whether the token, the licence or the network is missing
        check_model_access(choice.path)
    if profile == "hub" and choice.path != DEFAULT_HUB_ID:
        print(f"NOTE: outputs below come from {choice.path}, not from Llama 3.2 1B.")
    if not choice.accuracy_means_something:
        print("NOTE: random weights: memory and speed are real, loss and accuracy mean nothing.")
    if report_to is not None:
        check_report_to(report_to)
    return Run(
        profile, choice, hardware, Path(results_dir or root / "results"), Path(output_dir or root / "outputs")
    )
