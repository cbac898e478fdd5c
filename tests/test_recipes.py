"""The recipe in one cell (notebooks 1-3, their last section): it runs with the stock libraries alone, and its
settings are the notebook's own."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from test_train_script import config_keywords, literal_keywords  # noqa: E402

TINY = ROOT / "models" / "tiny-llama-support"
# the cell's tag; it also has skip-execution and nbval-skip: the notebook does not run it
RECIPE_TAG = "recipe"
NOTEBOOKS = {"01_full_finetuning.ipynb": "full", "02_lora.ipynb": "lora", "03_qlora.ipynb": "qlora"}
# the stand-in's learning rates (make study's picks), for a loss that falls within a few steps
TINY_RATES = {"full": 1e-3, "lora": 3e-3, "qlora": 3e-3}
# the notebook's own keywords that the recipe leaves to its defaults or sets otherwise, and why
NOT_IN_RECIPE = {
    "output_dir", "save_steps", "save_total_limit",  # the recipe saves once, at the end
    "gradient_accumulation_steps", "gradient_checkpointing", "optim",  # notebook 1's memory plans
    "train_sampling_strategy",  # the notebooks' batches of similar length
    "include_num_input_tokens_seen", "logging_nan_inf_filter",  # the notebooks' speed and nan guards
    "use_cpu", "seed", "report_to",  # defaults in the recipe
}


def recipe_cell(notebook: str) -> str:
    """The source of the notebook's one code cell tagged recipe."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    [cell] = [c for c in cells if RECIPE_TAG in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


def with_settings(source: str, **settings: object) -> str:
    """The cell with its top-level NAME = ... lines set to other values."""
    for name, value in settings.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
        assert count == 1, f"no {name} = line in the recipe cell"
    return source


# Runs each recipe in its own namespace, in one process (one start-up instead of three), and prints its
# outcome between markers; the course's helpers cannot be imported.
RUNNER = """
import sys, traceback
sys.modules["helpers"] = None
for path in sys.argv[1:]:
    print("RECIPE", path, flush=True)
    try:
        exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
    except Exception:
        traceback.print_exc(file=sys.stdout)
        print("FAILED", flush=True)
"""


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory) -> dict[str, tuple[str, object]]:
    """Each notebook's recipe run on the tiny model and 48 examples: {notebook: (its output, its folder)}."""
    tmp = tmp_path_factory.mktemp("recipes")
    rows = [json.loads(line) for line in (ROOT / "data" / "support" / "train.jsonl").read_text().splitlines()]
    messages = [{"messages": [{"role": "user", "content": r["prompt"]},
                              {"role": "assistant", "content": r["completion"]}]} for r in rows[:48]]
    scripts = []
    for notebook, method in NOTEBOOKS.items():
        data = tmp / f"{method}.jsonl"  # LoRA's in the other format the recipe takes: lists of messages
        chosen = messages if method == "lora" else rows[:48]
        data.write_text("".join(json.dumps(row) + "\n" for row in chosen))
        source = with_settings(recipe_cell(notebook), MODEL=str(TINY), DATA=str(data), OUT=str(tmp / method))
        source = re.sub(r"learning_rate=[\d.e-]+", f"learning_rate={TINY_RATES[method]}", source, count=1)
        scripts.append(tmp / f"{method}.py")
        scripts[-1].write_text(source.replace("logging_steps=10", "logging_steps=1"))  # 6 steps of 8
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", RUNNER, *map(str, scripts)], cwd=tmp, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = done.stdout.split("RECIPE ")[1:]
    return {notebook: (out, tmp / method) for (notebook, method), out in zip(NOTEBOOKS.items(), outputs,
                                                                             strict=True)}


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_recipe_runs_with_the_stock_libraries_alone(notebook, recipe_runs):
    output, folder = recipe_runs[notebook]
    assert "FAILED" not in output, output[-3000:]
    first, last = map(float, re.search(r"training loss ([\d.]+) -> ([\d.]+)", output).groups())
    assert last < first, output
    reloaded = AutoModelForCausalLM.from_pretrained(folder)  # for an adapter: its base, then the adapter
    assert hasattr(reloaded, "peft_config") == (NOTEBOOKS[notebook] != "full")
    assert torch.isfinite(reloaded(input_ids=torch.tensor([[0, 5, 6, 7]])).logits).all()


def drift(notebook_own: dict[str, dict], recipe: dict[str, dict]) -> list[str]:
    """The notebook's literal settings that the recipe does not share, for the real model (a notebook's
    `tiny if profile == "tiny" else real` gives the recipe its second value)."""
    found = []
    if set(recipe) != set(notebook_own):
        found.append(f"config classes: {sorted(notebook_own)} vs {sorted(recipe)}")
    for name, keywords in notebook_own.items():
        for key, value in keywords.items():
            expected = value[1] if isinstance(value, tuple) else value
            if key not in NOT_IN_RECIPE and recipe.get(name, {}).get(key) != expected:
                got = recipe.get(name, {}).get(key)
                found.append(f"{name}({key}=...): {expected!r} in the notebook, {got!r} in the recipe")
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_recipe_keeps_the_notebooks_settings(notebook):
    assert drift(literal_keywords(notebook), literal_keywords(notebook, tags={RECIPE_TAG})) == []


def test_the_drift_check_sees_a_changed_setting():
    recipe = recipe_cell("03_qlora.ipynb")
    for old, new in (("r=16,", "r=8,"), ('"nf4"', '"fp4"'), ("learning_rate=2e-4", "learning_rate=1e-4")):
        assert old in recipe
        changed = config_keywords(recipe.replace(old, new, 1))
        assert len(drift(literal_keywords("03_qlora.ipynb"), changed)) == 1, old
