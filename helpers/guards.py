"""Guards around training: precision, special tokens, LoRA set-up, adapter/base match, NaN loss, checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import threading
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer_utils import sort_checkpoints

from helpers.artifacts import shown
from helpers.models import END_OF_TURN, stop_token_ids

FINGERPRINT_FILE = "base_fingerprint.json"
FINGERPRINT_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "adapter_model.bin",
)
RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


# ---------------------------------------------------------------------------
# Before training: precision and tokens
# ---------------------------------------------------------------------------


def check_trainable_dtypes(model: torch.nn.Module, fp16: bool) -> int:
    """Refuse float16 trainable weights with fp16=True (and no trainable weights); return the trainable count."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "No parameter requires grad, so training would change nothing. Fix: for full fine-tuning load the model "
            "without freezing it; for LoRA call get_peft_model(model, lora_config) before building the trainer."
        )
    half = [n for n, p in trainable if p.dtype == torch.float16]
    if fp16 and half:
        raise ValueError(
            f"{len(half)} trainable parameters are float16 (first: {half[0]}), and fp16=True: the Trainer would stop "
            "with 'Attempting to unscale FP16 gradients'. Fix: load the weights you train in float32 "
            "(from_pretrained(..., dtype=torch.float32)) and keep fp16=True for mixed precision, or use bf16 on an "
            "Ampere-or-newer GPU; do not call model.half() or model.to(torch.float16) after get_peft_model."
        )
    return sum(p.numel() for _, p in trainable)


def check_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Check pad differs from the stop tokens, and model and generation configs agree with the tokenizer."""
    stops = stop_token_ids(tokenizer)
    problems = []
    if tokenizer.pad_token_id is None:
        problems.append("the tokenizer has no pad token (set tokenizer.pad_token = '<|finetune_right_pad_id|>')")
    elif tokenizer.pad_token_id in stops:
        problems.append(
            f"the pad token {tokenizer.pad_token!r} is a stop token, so its labels are masked and the model never "
            "learns to stop (something set pad = eos: reload with helpers.models.load_tokenizer)"
        )
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if eot not in eos:
        problems.append(
            f"generation does not stop on {END_OF_TURN} (generation_config.eos_token_id={sorted(eos)}; fix: "
            "model.generation_config.eos_token_id = stop_token_ids(tokenizer))"
        )
    if model.config.pad_token_id not in (None, tokenizer.pad_token_id):
        problems.append(
            f"model.config.pad_token_id={model.config.pad_token_id} but the tokenizer pads with "
            f"{tokenizer.pad_token_id} (fix: model.config.pad_token_id = tokenizer.pad_token_id)"
        )
    if problems:
        raise ValueError("Special tokens are not set up for training: " + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------
# LoRA set-up and adapters
# ---------------------------------------------------------------------------


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the nn.Linear layers LoRA can target (e.g. q_proj, ..., down_proj), without lm_head."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


def check_target_modules(model: torch.nn.Module, target_modules: str | list[str] | None) -> None:
    """Raise, listing the model's linear layers, if a LoRA target name matches no layer."""
    if target_modules is None or isinstance(target_modules, str):  # "all-linear" or a regex: peft checks it
        return
    available = linear_module_names(model)
    module_names = [name for name, _ in model.named_modules()]
    unknown = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in module_names)]
    if unknown:
        raise ValueError(
            f"LoRA target_modules {unknown} match no layer of this model. Its linear layers are {available}. "
            "Fix: pick from those names, or use target_modules='all-linear' (names like 'query' or 'c_attn' "
            "come from BERT/GPT-2 tutorials)."
        )


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """Return the plain base of a PeftModel, so re-running a get_peft_model cell does not stack adapters."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        print("model already had LoRA layers (cell re-run?): removing them before adding new ones.")
        return model.unload()
    if hasattr(model, "peft_config"):
        raise ValueError(
            "This model already has LoRA layers injected (get_peft_model changes the model in place). "
            "Fix: load the base again with from_pretrained in the same cell that calls get_peft_model, "
            "or keep using the PeftModel that get_peft_model returned."
        )
    return model


def _base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _weight_sample(model: torch.nn.Module, n: int = 1024) -> list[float]:
    """n evenly spaced values of the input embedding matrix (never touched by LoRA), as floats."""
    weight = _base_of(model).get_input_embeddings().weight.detach().flatten()
    step = max(1, weight.numel() // n)
    return weight[::step][:n].float().cpu().tolist()


def save_base_fingerprint(adapter_dir: str | Path, model: torch.nn.Module) -> Path:
    """Write base_fingerprint.json next to an adapter: the base's name, shape settings and a weight sample."""
    base = _base_of(model)
    fingerprint = {
        "name_or_path": base.name_or_path or None,
        "config": {k: getattr(base.config, k, None) for k in FINGERPRINT_CONFIG_KEYS},
        "embedding_sample": _weight_sample(base),
    }
    path = Path(adapter_dir) / FINGERPRINT_FILE
    path.write_text(json.dumps(fingerprint), encoding="utf-8")
    return path


def _short_name(name_or_path: str) -> str:
    """'/x/models/tiny-llama-support' -> 'tiny-llama-support'; 'models--org--name/snapshots/..' -> 'name'."""
    parts = Path(name_or_path).parts
    for part in parts:
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


def check_adapter_base(adapter_dir: str | Path, base_model: PreTrainedModel) -> None:
    """Refuse loading an adapter onto a base it was not trained on: other name, other shapes or other weights."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No adapter_config.json in {adapter_dir}: save the adapter there first.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base_name = base_model.name_or_path or None
    trained_on = config.get("base_model_name_or_path")
    how = f"Fix: load the base the adapter was trained on ({trained_on or 'see ' + FINGERPRINT_FILE}) and retry."
    if trained_on and base_name and _short_name(trained_on) != _short_name(base_name):
        raise ValueError(f"The adapter in {adapter_dir} was trained on '{trained_on}', not '{base_name}'. {how}")

    fingerprint_path = adapter_dir / FINGERPRINT_FILE
    if fingerprint_path.is_file():
        fingerprint = json.loads(fingerprint_path.read_text(encoding="utf-8"))
        differ = [
            f"{k} {v} (this base: {getattr(base_model.config, k, None)})"
            for k, v in fingerprint["config"].items()
            if v != getattr(base_model.config, k, None)
        ]
        if differ:
            raise ValueError(f"The adapter in {adapter_dir} was trained on a base with {', '.join(differ)}. {how}")
        saved = torch.tensor(fingerprint["embedding_sample"])
        now = torch.tensor(_weight_sample(base_model, len(saved)))
        if now.shape != saved.shape or (now - saved).abs().max() > 1e-2 * saved.abs().max():
            raise ValueError(
                f"The adapter in {adapter_dir} was trained on a base with the same shapes but different weights "
                f"(e.g. base vs -Instruct, or random vs pretrained): it would load silently and give poor output. "
                f"{how}"
            )

    modules = dict(_base_of(base_model).named_modules())
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            if ".lora_A." not in key:
                continue
            module_name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            rank, in_features = f.get_slice(key).get_shape()
            module = modules.get(module_name)
            if module is None:
                raise ValueError(f"The adapter trains {module_name}, which this base does not have. {how}")
            if getattr(module, "in_features", in_features) != in_features:
                raise ValueError(
                    f"The adapter was trained for a base whose {module_name} takes {in_features} input features; "
                    f"this base's takes {module.in_features} (a different model size). {how}"
                )


# ---------------------------------------------------------------------------
# During training
# ---------------------------------------------------------------------------


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training at the first logged loss (or grad norm, outside fp16) that is nan or inf, saying why."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            raise ValueError(
                "logging_nan_inf_filter=True (the default) replaces nan/inf losses with the average of earlier ones "
                "in the log, hiding a diverged run. Fix: pass logging_nan_inf_filter=False to SFTConfig / "
                "TrainingArguments."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        keys = ["loss"] if args.fp16 else ["loss", "grad_norm"]  # fp16 loss scaling overflows now and then
        for key in keys:
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                last = f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}" if (
                    self.last_finite
                ) else "no finite loss was logged before"
                checkpoint = last_good_checkpoint(args.output_dir, quiet=True)
                raise FloatingPointError(
                    f"Training stopped at step {state.global_step}: {key} is {value} ({last}). Likely causes: "
                    f"a learning rate too high ({args.learning_rate:g}: try 10x lower, with warmup); float16 "
                    "overflow (use bf16 on Ampere+ GPUs, or fp16 mixed precision with float32 weights); "
                    "examples whose answer was cut off entirely (all labels -100: run check_lengths); "
                    "a bad data row. "
                    + (f"Last good checkpoint: {checkpoint}." if checkpoint else "No checkpoint was saved yet.")
                )
        if logs.get("loss") is not None:
            self.last_finite = (state.global_step, logs["loss"])


def check_checkpoint_limit(args) -> None:
    """Refuse saving checkpoints without save_total_limit (each full fine-tuning checkpoint of 1B is ~15 GB)."""
    if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no" and args.save_total_limit is None:
        raise ValueError(
            "save_total_limit is None: every checkpoint is kept until the disk fills (a full fine-tuning "
            "checkpoint of Llama 3.2 1B with its optimizer states is ~15 GB). Fix: save_total_limit=2."
        )


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (missing or unreadable files), or None if it is complete."""
    folder = Path(folder)
    missing = [name for name in RESUME_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model weights")
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON"
    for weights in folder.glob("*.safetensors"):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as err:  # a file cut off by a crash during saving
            return f"{weights.name} is unreadable ({err})"
    return None


def last_good_checkpoint(output_dir: str | Path, quiet: bool = False) -> str | None:
    """The newest complete checkpoint-N folder in output_dir (skipping broken ones), or None to start fresh."""
    say = (lambda *a: None) if quiet else print
    if not Path(output_dir).is_dir():
        say(f"No checkpoints yet ({shown(output_dir)} does not exist): training starts from the beginning.")
        return None
    for folder in reversed(sort_checkpoints(str(output_dir))):
        problem = checkpoint_problem(folder)
        if problem is None:
            state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
            if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
                say(f"The last run in {shown(output_dir)} finished ({Path(folder).name} is its last step): "
                    "training starts from the beginning.")
                return None
            say(f"Resuming from {shown(folder)}.")
            return folder
        say(f"Skipping {shown(folder)}: {problem} (interrupted while saving?).")
    say(f"No complete checkpoint in {shown(output_dir)}: training starts from the beginning.")
    return None


def _training(frame) -> bool:
    """Whether a frame runs inside Trainer.train() (the interrupted code, seen from a signal handler)."""
    while frame is not None:
        if frame.f_code is Trainer.train.__code__:
            return True
        frame = frame.f_back
    return False


class CheckpointOnInterrupt(TrainerCallback):
    """Ctrl-C, a kernel interrupt or SIGTERM during training: finish the step, save a checkpoint, stop, say how to
    resume. A second press stops at once, naming the last complete checkpoint."""

    def __init__(self) -> None:
        self.interrupted = False
        self.step: int | None = None
        self.output_dir = ""
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not _training(frame):  # training already ended with an error: an interrupt is an interrupt again
            self.uninstall()
            raise KeyboardInterrupt
        if self.interrupted:
            self.uninstall()
            last = last_good_checkpoint(self.output_dir, quiet=True)
            raise KeyboardInterrupt(
                "Training was stopped mid-step. "
                + (f"Re-run this cell to resume from {shown(last)}." if last else "No checkpoint was saved yet.")
            )
        self.interrupted = True
        print("Interrupt received: finishing this step and saving a checkpoint. Interrupt again to stop at once.")

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (main thread only; elsewhere nothing changes)."""
        self.uninstall()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        check_checkpoint_limit(args)
        self.interrupted, self.step, self.output_dir = False, None, args.output_dir
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            self.step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
        if self.interrupted:
            raise KeyboardInterrupt(
                f"Training interrupted at step {self.step}; checkpoint saved in {shown(args.output_dir)}/"
                f"checkpoint-{self.step}. Re-run this cell to resume from it (later cells would otherwise use a "
                "half-trained model)."
            )


def check_report_to(report_to: str) -> None:
    """Fail at once, with the fix, if the chosen tracker is not installed or (wandb) not logged in: never a prompt."""
    trackers = {"none": None, "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
    if report_to not in trackers:
        raise ValueError(f"REPORT_TO={report_to!r} is not one of {', '.join(map(repr, trackers))}.")
    package = trackers[report_to]
    if package and importlib.util.find_spec(package) is None:
        login = {"wandb": ", then `wandb login` (or set WANDB_API_KEY)", "trackio": ""}.get(package, "")
        raise ModuleNotFoundError(f"REPORT_TO={report_to!r} needs {package}: pip install {package}{login}, then re-run.")
    if report_to == "wandb" and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        logged_in = os.environ.get("WANDB_API_KEY") or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
        if not logged_in:
            raise RuntimeError(
                "REPORT_TO='wandb' but this machine is not logged in to Weights & Biases, so training would stop at a "
                "login prompt. Fix: run `wandb login` in a terminal (or set WANDB_API_KEY; in Colab: Secrets), or set "
                "WANDB_MODE=offline to log locally, then re-run."
            )
