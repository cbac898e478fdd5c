"""scripts/train.py: the notebooks' recipe as a script, under accelerate launch, on one process or two."""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env
from peft import LoraConfig
from transformers import BitsAndBytesConfig
from trl import SFTConfig

from helpers.hardware import choose_precision

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import train
finally:
    sys.path.remove(str(ROOT / "scripts"))


def test_the_global_batch_is_split_over_the_processes():
    assert train.per_device_batch(8, 1) == 8
    assert train.per_device_batch(8, 4) == 2
    with pytest.raises(ValueError, match=r"--global-batch 8 does not split evenly over 3 processes.*--global-batch 6"):
        train.per_device_batch(8, 3)


def start(launcher: list[str], *script_args: str, output_dir: Path) -> subprocess.Popen:
    """scripts/train.py on the tiny profile under launcher, started in the background (wait with finish)."""
    command = [*launcher, str(SCRIPT), "--profile", "tiny", "--output-dir", str(output_dir), *script_args]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}  # 1 thread each: the CI machine has 2 cores
    output_dir.mkdir(parents=True)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=output_dir)


def finish(run: subprocess.Popen) -> str:
    """Wait for a run from start; its stdout."""
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return stdout


def logged_losses(output_dir: Path) -> list[float]:
    """The training loss of each logged step, from the last checkpoint's trainer_state.json."""
    last = max((output_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [entry["loss"] for entry in json.loads((last / "trainer_state.json").read_text())["log_history"] if "loss" in entry]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two CPU processes (DDP over gloo, 4 examples each) against one process (8 examples), the same global batch of 8, for
# three optimizer steps with a loss logged at each. Measured on 2 cores: 9.16, 8.13 and 5.80, at most 9.5e-7 apart (one
# float32 step at these values; LoRA the same). Not bit-equal: float32 sums in another order (each process pads its 4
# examples to their own longest, so the matrix shapes differ; the two gradients meet in a gloo all-reduce), and AdamW's
# first updates, about lr * sign(gradient), carry such last-bit differences into the weights. The tolerance leaves 100x
# that for other CPUs and kernels; other examples in a step move the loss by far more (LoRA with --global-batch 4
# instead of 8 logged 7.7, 8.3 and 5.6 instead of 9.1, 8.2 and 5.8).
LOSS_TOLERANCE = 1e-4


def test_qlora_on_two_cpu_processes_trains_the_same_steps_as_on_one(tmp_path):
    same = ["--method", "qlora", "--train-examples", "24", "--eval-examples", "8", "--test-examples", "0",
            "--max-steps", "3", "--logging-steps", "1"]
    launch = [str(ACCELERATE), "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    runs = {  # both at once: most of each run is starting Python and loading libraries
        "one": start([*launch, "--cpu", "--num_processes", "1"], *same, output_dir=tmp_path / "one"),
        "two": start([*launch, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())],
                     *same, output_dir=tmp_path / "two"),
    }
    stdout = {name: finish(run) for name, run in runs.items()}
    assert "1 process(es) x 8 examples per step" in stdout["one"]
    assert "2 process(es) x 4 examples per step" in stdout["two"]  # gloo, DDP: the script asked for the CPU
    assert stdout["two"].count("eval loss") == stdout["one"].count("eval loss") == 1  # the first process alone
    for run in runs:
        saved = {p.name for p in (tmp_path / run / "final").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    print(f"losses per step: one process {one}, two processes {two}")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, abs=LOSS_TOLERANCE)


# --- The notebooks and the script build the same configs --------------------------------------------------------

NOTEBOOKS = {  # notebook: (method, the config classes it builds)
    "01_full_finetuning.ipynb": ("full", {"SFTConfig"}),
    "02_lora.ipynb": ("lora", {"LoraConfig", "SFTConfig"}),
    "03_qlora.ipynb": ("qlora", {"BitsAndBytesConfig", "LoraConfig", "SFTConfig"}),
}
CONFIG_CLASSES = {"SFTConfig": SFTConfig, "LoraConfig": LoraConfig, "BitsAndBytesConfig": BitsAndBytesConfig}
ALLOWED_TO_DIFFER = {
    # the script writes <output-dir>/checkpoints; the notebooks <method>-checkpoints beside their merged models
    "output_dir",
    # the notebooks count real tokens for their ThroughputCallback's speed table; the script has no such callback
    "include_num_input_tokens_seen",
    # DDP only: the notebooks train in one process
    "ddp_find_unused_parameters",
}
# AdamW either way: the fused kernel (SFTConfig's default, the script's) computes the same update as the loop
SAME_OPTIMIZER = {"adamw_torch_fused": "adamw_torch"}
SETTINGS = [("cpu", None, "tiny"), ("cuda", (8, 0), "llama-3.2-1b")]  # (device, capability, profile)


def config_calls(tree: ast.AST) -> dict[str, dict[str, ast.expr]]:
    """{class name: {keyword: value expression}} for each SFTConfig(...), LoraConfig(...), BitsAndBytesConfig(...)."""
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CONFIG_CLASSES:
            assert node.func.id not in calls, f"{node.func.id} is built twice"
            calls[node.func.id] = {k.arg: k.value for k in node.keywords}
    return calls


def literal_names(tree: ast.Module) -> dict:
    """Top-level NAME = <literal> assignments made once (the parameters cell, notebook 1's plans)."""
    assigned = [(n.targets[0].id, n.value) for n in tree.body
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)]
    once = Counter(name for name, _ in assigned)
    values = {}
    for name, value in assigned:
        if once[name] == 1:
            with contextlib.suppress(ValueError, TypeError, SyntaxError):  # not a literal
                values[name] = ast.literal_eval(value)
    return values


def evaluate(calls: dict[str, ast.expr], key: str, names: dict, config_class: type):
    """The value a call passes for key, computed with names; the class's default where the call leaves key out."""
    if key in calls:
        value = eval(compile(ast.Expression(calls[key]), "<config>", "eval"), {"__builtins__": {}}, names)
    else:
        value = inspect.signature(config_class).parameters[key].default
    return SAME_OPTIMIZER.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_script_builds_the_notebooks_configs(notebook):
    """Same keywords and values in SFTConfig, LoraConfig and BitsAndBytesConfig as the notebook, on CPU and on GPU.

    Each side's expressions are evaluated with its own names: the notebook's parameters cell (and notebook 1's first,
    "plain" memory plan, the one that fits where the script's full fine-tuning runs; notebooks 2 and 3's plan without
    gradient checkpointing, the script's default), the script's command-line
    defaults. A keyword that only one side passes must have SFTConfig's (LoraConfig's, ...) default there.
    """
    method, classes = NOTEBOOKS[notebook]
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    code = [ast.parse("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    notebook_code = ast.Module([node for cell in code for node in cell.body], [])
    in_notebook, in_script = config_calls(notebook_code), config_calls(ast.parse(SCRIPT.read_text()))
    assert set(in_notebook) == classes
    notebook_names = literal_names(notebook_code)
    if "plans" in notebook_names:
        notebook_names["plan"] = notebook_names["plans"][0]
    notebook_names["gradient_checkpointing"] = False  # notebooks 2 and 3's memory plan where the batch fits, as here
    args = train.build_parser().parse_args(["--method", method])
    defaults = {k: p.default for k, p in inspect.signature(train.load_model).parameters.items() if p.default is not p.empty}
    for device, capability, profile in SETTINGS:
        precision = choose_precision(device, capability)
        common = {"profile": profile, "hardware": SimpleNamespace(device_type=device), "precision": precision}
        names = {  # the script's main() passes load_model precision.torch_dtype; batch: one process's share
            "notebook": {**notebook_names, **common},
            "script": {**defaults, **common, "args": args, "LEARNING_RATES": train.LEARNING_RATES,
                       "batch": train.per_device_batch(args.global_batch, 1), "dtype": precision.torch_dtype},
        }
        for name in classes:
            sides = {"notebook": in_notebook[name], "script": in_script[name]}
            for key in sorted((set(sides["notebook"]) | set(sides["script"])) - ALLOWED_TO_DIFFER):
                values = {side: evaluate(calls, key, names[side], CONFIG_CLASSES[name]) for side, calls in sides.items()}
                assert values["notebook"] == values["script"], f"{name}({key}=...) on {device}, profile {profile}: {values}"


# --- Several GPUs: the FSDP config ---------------------------------------------------------------------------------


def test_the_fsdp_config_loads_and_shards_full_fine_tuning_by_decoder_layer():
    """configs/fsdp.yaml loads with accelerate's own loader. Only a machine with several GPUs can run it: accelerate
    uses FSDP from MULTI_GPU only, and on CPU processes trains plain DDP instead."""
    path = ROOT / "configs" / "fsdp.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == "FSDP"
    assert config.mixed_precision == "bf16"
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # final/ and the checkpoints hold the whole model
    # accelerate launch copies each fsdp_config key onto its option of that name, and drops unknown ones silently
    launch = launch_command_parser().parse_args(["--config_file", str(path), str(SCRIPT), "--method", "full"])
    assert set(fsdp) <= set(vars(launch)), sorted(set(fsdp) - set(vars(launch)))
    launch, _, _ = _validate_launch_command(launch)  # what accelerate launch does with the file ...
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(launch)):  # ... and the environment it gives the processes
        plugin = FullyShardedDataParallelPlugin()  # raises where FSDP2 rejects a setting
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert config.num_processes == launch.num_processes == 2
