"""scripts/train.py: the notebooks' recipe as a script, under accelerate launch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def test_qlora_under_accelerate_launch_trains_and_saves_the_adapter(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(ROOT / "scripts" / "train.py"), "--method", "qlora", "--profile", "tiny",
        "--train-examples", "16", "--eval-examples", "8", "--test-examples", "0", "--output-dir", str(tmp_path),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "1 process(es) x 8 examples per step" in done.stdout
    assert "eval loss" in done.stdout
    saved = sorted(p.name for p in (tmp_path / "final").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(saved)
    assert (tmp_path / "checkpoints").is_dir()
