"""scripts/train.py: the notebooks' recipe as a script, under accelerate launch, on one process or two."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from conftest import load_script

from helpers import ROOT, recipe
from helpers.hardware import choose_precision

SCRIPT = ROOT / "scripts" / "train.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
train = load_script("train")


def test_the_global_batch_is_split_over_the_processes():
    assert train.per_device_batch(8, 1) == 8
    assert train.per_device_batch(8, 4) == 2
    with pytest.raises(
        ValueError, match=r"--global-batch 8 does not split evenly over 3 processes.*--global-batch 6"
    ):
        train.per_device_batch(8, 3)


def start(launcher: list[str], *script_args: str, output_dir: Path) -> subprocess.Popen:
    """scripts/train.py on the tiny profile under launcher, started in the background (wait with finish)."""
    command = [*launcher, str(SCRIPT), "--profile", "tiny", "--output-dir", str(output_dir), *script_args]
    # 1 thread each: the CI machine has 2 cores
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    output_dir.mkdir(parents=True)
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=output_dir
    )


def finish(run: subprocess.Popen) -> str:
    """Wait for a run from start; its stdout."""
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return stdout


def logged_losses(output_dir: Path) -> list[float]:
    """The training loss of each logged step, from the last checkpoint's trainer_state.json."""
    last = max((output_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [
        entry["loss"]
        for entry in json.loads((last / "trainer_state.json").read_text())["log_history"]
        if "loss" in entry
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two CPU processes (DDP over gloo, 4 examples each) against one process (8 examples), the same
# global batch of 8, for three optimizer steps with a loss logged at each. Measured on 2 cores: 9.16,
# 8.13 and 5.80, at most 9.5e-7 apart (one float32 step at these values; LoRA the same). Not
# bit-equal: float32 sums in another order (each process pads its 4 examples to their own longest, so
# the matrix shapes differ; the two gradients meet in a gloo all-reduce), and AdamW's first updates,
# about lr * sign(gradient), carry such last-bit differences into the weights. The tolerance leaves
# 100x that for other CPUs and kernels; other examples in a step move the loss by far more (LoRA with
# --global-batch 4 instead of 8 logged 7.7, 8.3 and 5.6 instead of 9.1, 8.2 and 5.8).
LOSS_TOLERANCE = 1e-4


def test_qlora_on_two_cpu_processes_trains_the_same_steps_as_on_one(tmp_path):
    same = ["--method", "qlora", "--train-examples", "24", "--eval-examples", "8", "--test-examples", "0",
            "--max-steps", "3", "--logging-steps", "1"]
    launch = [
        str(ACCELERATE),
        "launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    runs = {  # both at once: most of each run is starting Python and loading libraries
        "one": start([*launch, "--cpu", "--num_processes", "1"], *same, output_dir=tmp_path / "one"),
        "two": start(
            [*launch, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())],
            *same,
            output_dir=tmp_path / "two",
        ),
    }
    stdout = {name: finish(run) for name, run in runs.items()}
    assert "1 process(es) x 8 examples per step" in stdout["one"]
    assert "2 process(es) x 4 examples per step" in stdout["two"]  # gloo, DDP: the script asked for the CPU
    # the first process alone
    assert stdout["two"].count("eval loss") == stdout["one"].count("eval loss") == 1
    for run in runs:
        saved = {p.name for p in (tmp_path / run / "final").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    print(f"losses per step: one process {one}, two processes {two}")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, abs=LOSS_TOLERANCE)


# --- The notebooks and helpers/recipe.py (what the scripts train with) hold the same values ---------------

NOTEBOOKS = {  # notebook: (method, the config classes it builds)
    "01_full_finetuning.ipynb": ("full", {"SFTConfig"}),
    "02_lora.ipynb": ("lora", {"LoraConfig", "SFTConfig"}),
    "03_qlora.ipynb": ("qlora", {"BitsAndBytesConfig", "LoraConfig", "SFTConfig"}),
}
CONFIG_CLASSES = {"SFTConfig", "LoraConfig", "BitsAndBytesConfig"}
# the notebooks count real tokens for their speed table;
# the scripts' fused AdamW computes the same update as adamw_torch
NOT_RECIPE = {"include_num_input_tokens_seen", "optim", "report_to"}  # report_to: a notebook parameter


def literal_keywords(notebook: str, tags: set[str] | None = None) -> dict[str, dict]:
    """A notebook's config calls' literal keywords, {class: {keyword: value}}; `a if c else b` -> (a, b).

    The code cells with one of tags, or by default those without the recipe tag (the recipe in one cell)."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    chosen = [c for c in cells if c["cell_type"] == "code"
              and (bool(tags & set(c["metadata"].get("tags", []))) if tags else
                   "recipe" not in c["metadata"].get("tags", []))]
    return config_keywords("\n".join("".join(c["source"]) for c in chosen))


def config_keywords(source: str) -> dict[str, dict]:
    """The literal keywords of the config calls in source; a name assigned one literal value counts as it."""
    tree = ast.parse(source)
    named: dict[str, list] = {}  # names given one literal value, like `batch_size = 8`
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                named.setdefault(node.targets[0].id, []).append(ast.literal_eval(node.value))
    constants = {
        name: ast.Constant(values[0]) for name, values in named.items() if len(set(map(repr, values))) == 1
    }
    calls: dict[str, dict] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in CONFIG_CLASSES:
            for k in node.keywords:
                values = [k.value.body, k.value.orelse] if isinstance(k.value, ast.IfExp) else [k.value]
                values = [constants.get(v.id, v) if isinstance(v, ast.Name) else v for v in values]
                with contextlib.suppress(ValueError):  # not a literal: a name, a call, a comparison
                    literals = tuple(ast.literal_eval(v) for v in values)
                    calls.setdefault(node.func.id, {})[k.arg] = literals if len(literals) > 1 else literals[0]
    return calls


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_recipe_has_the_notebooks_values(notebook):
    method, classes = NOTEBOOKS[notebook]
    calls = literal_keywords(notebook)
    assert set(calls) == classes
    # the rates are (tiny profile, real model)
    assert calls["SFTConfig"].pop("learning_rate") == recipe.LEARNING_RATES[method]
    hardware = SimpleNamespace(device_type="cpu", precision=choose_precision("cpu", None))
    built = {
        "SFTConfig": recipe.sft_config(
            method, "tiny", hardware, output_dir="unused", batch=8, max_length=256, seed=42
        ),
        "LoraConfig": recipe.lora_config(),
        "BitsAndBytesConfig": recipe.bnb_config(torch.float32),
    }
    for name, keywords in calls.items():
        for key, value in keywords.items():
            if key not in NOT_RECIPE:
                assert getattr(built[name], key) == value, (
                    f"{notebook}: {name}({key}={value!r}) differs from the recipe"
                )


# --- Several GPUs: the FSDP config ------------------------------------------------------------------------


def test_the_fsdp_config_loads_and_shards_full_fine_tuning_by_decoder_layer():
    """configs/fsdp.yaml loads with accelerate's own loader; only a machine with several GPUs can run it.

    accelerate uses FSDP from MULTI_GPU only, and on CPU processes trains plain DDP instead.
    """
    path = ROOT / "configs" / "fsdp.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == "FSDP"
    assert config.mixed_precision == "bf16"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    # final/ and the checkpoints hold the whole model
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # accelerate launch copies each fsdp_config key onto its option of that name,
    # and drops unknown ones silently
    launch = launch_command_parser().parse_args(["--config_file", str(path), str(SCRIPT), "--method", "full"])
    assert set(fsdp) <= set(vars(launch)), sorted(set(fsdp) - set(vars(launch)))
    # what accelerate launch does with the file, and the environment it gives the processes
    launch, _, _ = _validate_launch_command(launch)
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(launch)):
        plugin = FullyShardedDataParallelPlugin()  # raises where FSDP2 rejects a setting
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert config.num_processes == launch.num_processes == 2
