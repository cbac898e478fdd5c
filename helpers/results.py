"""Saving and loading the results file each notebook writes, so the comparison notebook can read them."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from helpers.artifacts import dir_size_bytes
from helpers.data import example_ids
from helpers.install import package_versions
from helpers.scoring import REPLY_FIELDS, TASK_ACCURACY, headline

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import TrainingArguments

    from helpers.hardware import Hardware
    from helpers.memory import MemoryTracker
    from helpers.models import ModelChoice

# Every results file has these keys. save_results() sets created_at itself.
RESULT_KEYS = (
    "method",  # "full", "lora" or "qlora"
    "profile",  # the run profile, e.g. "tiny" or "hub"
    "model_id",
    "device",  # Hardware.describe()
    "dtype",  # Precision.name
    "versions",  # package_versions()
    "total_params",
    "trainable_params",
    "peak_memory",  # {"measured": ..., "peak_bytes": ..., "breakdown": {...}}
    "train_tokens_per_second",
    "train_seconds",
    "eval_loss",
    "perplexity",
    "accuracy_before",  # the test score before training: task accuracy (0 to 1), or chrF (0 to 100) where
    # an optional "metric" key says "chrF" (data without the header lines; helpers.data.score_any)
    "accuracy_after",
    "artifact_bytes",  # size of what you would ship: the full model, or the adapter
    "loss_history",  # [{"step": 10, "loss": 2.31}, ...]
    "notebook_fingerprint",  # notebook_fingerprint() of the notebook that wrote the file
    "created_at",  # UTC, ISO 8601
)


def _json_default(value: object) -> object:
    """Turn the few non-JSON types we meet (Path, torch.dtype, numpy/torch scalars) into JSON types."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value).removeprefix("torch.")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(
        f"{type(value).__name__} value {value!r:.80} cannot be written as JSON: "
        "convert it to a str, int, float, bool, None, list or dict first."
    )


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write data as JSON so that the file is either the old version or the complete new one, never half."""
    if not isinstance(data, dict):
        raise TypeError(f"write_json_atomic expects a dict, got {type(data).__name__}.")
    path = Path(path)
    # Serialise first: if that fails, nothing on disk has been touched.
    try:
        text = json.dumps(data, indent=2, default=_json_default)
    except (TypeError, ValueError) as error:
        raise TypeError(f"Not writing {path} (the existing file, if any, is unchanged): {error}") from error

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)  # atomic on the same file system
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def save_results(path: str | Path, **fields: object) -> Path:
    """Check that every key in RESULT_KEYS is given, stamp created_at, and write the file atomically."""
    # a diverged run writes nothing
    check_finite_metrics(**{k: v for k, v in fields.items() if isinstance(v, float)})
    fields["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    missing = [key for key in RESULT_KEYS if key not in fields]
    if missing:
        raise ValueError(
            f"save_results({str(path)!r}) is missing {', '.join(missing)}: pass them as keyword arguments."
        )
    return write_json_atomic(path, fields)


def save_run(
    path: str | Path,
    *,
    method: str,
    notebook: str | Path,
    profile: str,
    choice: ModelChoice,
    hardware: Hardware,
    tracker: MemoryTracker,
    speed: dict,
    params: tuple[int, int],
    data: str,
    dataset: DatasetDict,
    training_args: TrainingArguments,
    loss_history: list[dict],
    artifact: str | Path,
    losses: tuple[dict, dict],
    scores: tuple[dict, dict],
    general: tuple[str, dict, dict],
    config: dict,
    memory_plan: dict | None = None,
    **extra: object,
) -> Path:
    """Write a training notebook's results file, gathered from its objects (each pair: before, after)."""
    (loss_before, loss_after), (scores_before, scores_after) = losses, scores
    general_source, general_before, general_after = general  # the forgetting check's text, then its losses
    trainable, total = params  # as count_parameters returns them
    return save_results(
        path,
        method=method,
        profile=profile,
        model_id=choice.name,
        device=hardware.describe(),
        dtype=hardware.precision.name,
        versions=package_versions(),
        total_params=total,
        trainable_params=trainable,
        peak_memory=tracker.results,
        train_tokens_per_second=speed["tokens_per_second"],
        train_seconds=speed["train_seconds"],
        eval_loss=loss_after["eval_loss"],
        perplexity=loss_after["perplexity"],
        eval_loss_before=loss_before["eval_loss"],
        # test scores: overall, per field, per reply
        **score_fields(scores_before, scores_after, example_ids(dataset["test"])),
        # per example: for paired tests
        eval_losses=by_id(example_ids(dataset["validation"]), loss_after["per_example"]),
        general_text_loss={
            "source": general_source,
            "before": general_before["loss"],
            "after": general_after["loss"],
            "per_text_before": general_before["per_text"],
            "per_text_after": general_after["per_text"],
        },
        artifact_bytes=dir_size_bytes(artifact),
        loss_history=loss_history,
        # lets notebook 4 spot stale results
        notebook_fingerprint=notebook_fingerprint(notebook),
        **extra,  # e.g. QLoRA's merge_comparison
        config={
            "data": data,
            **config,  # the method's own settings, e.g. full fine-tuning's plan or LoRA's r and alpha
            "train_examples": len(dataset["train"]),
            "max_length": training_args.max_length,
            "learning_rate": training_args.learning_rate,
            "seed": training_args.seed,
            **({"memory_plan": memory_plan} if memory_plan is not None else {}),
        },
    )


def score_fields(before: dict, after: dict, ids: list[str] | None = None) -> dict:
    """The results file's test-score keys from reply_scores' scores before and after training.

    With the test examples' ids, each reply's score after training is kept too (`test_scores`, id -> 1/0 or
    chrF), so that notebook 4 can compare two methods example by example.
    """
    fields = {
        "metric": after["metric"],
        "accuracy_before": headline(before),
        "accuracy_after": headline(after),
        "test_examples": after["n"],
    }
    if after["metric"] == TASK_ACCURACY:
        fields["accuracy_by_field_before"] = {key: before[key] for key in REPLY_FIELDS}
        fields["accuracy_by_field_after"] = {key: after[key] for key in REPLY_FIELDS}
    if ids is not None:
        fields["test_scores"] = by_id(ids, after["per_reply"])
    return fields


def by_id(ids: list[str], values: list[float]) -> dict[str, float]:
    """Per-example values keyed by example id, for paired comparisons between results files."""
    if len(ids) != len(values) or len(set(ids)) != len(ids):
        raise ValueError(
            f"by_id needs one unique id per value: got {len(set(ids))} unique ids for {len(values)} values."
        )
    return dict(zip(ids, values, strict=True))


def load_results(path: str | Path, produced_by: str | None = None) -> dict:
    """Read a results file written by save_results(), with a clear message when it is missing or broken."""
    path = Path(path)
    notebook = produced_by or f"the notebook that produces {path.name}"
    how_to_fix = f"Run {notebook} to the end (its last cell saves it), then retry."
    if not path.exists():
        raise FileNotFoundError(f"No results file at {path}. {how_to_fix}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Results file {path} is not valid JSON ({error}). {how_to_fix}") from error
    if not isinstance(results, dict):
        raise ValueError(f"Results file {path} does not hold a JSON object. {how_to_fix}")
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise ValueError(f"Results file {path} lacks {', '.join(missing)} (an older format?). {how_to_fix}")
    return results


def notebook_fingerprint(path: str | Path) -> str:
    """A short hash of a notebook's code cells: it changes when the code changes, not when outputs do."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()[:16]



def check_finite_metrics(**metrics: float) -> None:
    """Refuse nan/inf metrics before they are written over an earlier, good results file."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(
            f"Not saving results: {', '.join(f'{k}={v}' for k, v in bad.items())}. "
            "The run diverged; the earlier results file (if any) is left as it was. "
            "Fix the training run (see the loss curve) and re-run."
        )
