# Two commands do everything on a fresh machine:
#   make course   run every notebook headless, in order, write results/ and print the comparison
#   make test     lint, unit tests, and every notebook under nbval (tiny profile unless COURSE_PROFILE says otherwise)
# Both create or refresh the local virtual environment .venv from requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: course test lint venv clean-venv smoke-random py313 gpu-check-dry-run bench serve study gguf-check gguf

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .  # the helpers package, so that scripts and tests import it
	touch $(STAMP)

course: $(STAMP)
	$(PY) scripts/run_course.py

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} COURSE_RESULTS_DIR=$(CURDIR)/.cache/test-run/results \
	COURSE_OUTPUT_DIR=$(CURDIR)/.cache/test-run/outputs COURSE_SWEEP_TRAIN_EXAMPLES=160 \
	COURSE_SWEEP_TEST_EXAMPLES=100 $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --durations=30 tests notebooks

# The course's training recipe against the pipeline a learner would copy, one knob at a time (tiny profile, every
# row in its own process) -> results/benchmark.json, which notebook 4 shows, then README's tables from it. 2.5 to 4.5
# minutes on 2 CPU cores (AVX-512 to AVX2).
bench: $(STAMP)
	TQDM_DISABLE=1 $(PY) scripts/benchmark.py
	$(PY) scripts/benchmark.py --readme

# Each method's learning rate tuned on validation loss (a half-decade grid, widened until the loss turns up on both sides
# of the pick), then two more seeds at the pick: results/study.json, which notebook 4 compares and whose picks notebooks
# 1-3 use (tiny profile, the notebooks' budget). Rerun to resume an interrupted study; outside CI (about an hour).
study: $(STAMP)
	TQDM_DISABLE=1 $(PY) scripts/study.py
	$(PY) scripts/study.py --readme

# A saved model folder exported to GGUF and checked (end of turn, template, token ids, logits), with an Ollama
# Modelfile: make gguf MODEL=outputs/lora-merged -> outputs/lora-merged-gguf/
gguf: $(STAMP)
	$(PY) scripts/export_gguf.py $(MODEL)

# Notebook 2's merged model (outputs/lora-merged, from make course) exported to GGUF and run through llama.cpp itself:
# stops at the end of turn, f16 replies against the HF model's, accuracy of f16, q8_0 and Q4_K_M -> results/gguf.json.
# Builds llama-cpp-python from source the first time (10 to 16 minutes on 2 cores; the wheel is kept in .cache/wheels).
gguf-check: $(STAMP)
	$(PY) scripts/gguf_check.py

# An OpenAI-compatible chat-completions API on 127.0.0.1 for a model or LoRA adapter folder (transformers serve),
# in the foreground until Ctrl-C: make serve MODEL=outputs/lora-merged PORT=8001
MODEL ?= models/tiny-llama-support
PORT ?= 8000
serve: $(STAMP)
	$(PY) scripts/serve.py --model $(MODEL) --port $(PORT)

# Notebooks 1-3 in the llama-3.2-1b-random profile with the smoke budget (real Llama 3.2 1B shapes, random weights);
# the executed copies go to .cache/smoke-random/, the committed notebooks are left alone.
smoke-random: $(STAMP)
	COURSE_PROFILE=llama-3.2-1b-random COURSE_SMOKE=1 COURSE_RESULTS_DIR=$(CURDIR)/.cache/smoke-random/results \
	COURSE_OUTPUT_DIR=$(CURDIR)/.cache/smoke-random/outputs \
	$(PY) scripts/run_course.py --out .cache/smoke-random --summary .cache/smoke-random/summary.json --no-compare \
	notebooks/01_full_finetuning.ipynb notebooks/02_lora.ipynb notebooks/03_qlora.ipynb

# Python 3.13 (Colab's): .venv313 from requirements.txt (on CPU, PyPI's CUDA build of torch: a 5.7 GB venv), the unit
# tests, and notebook 2 with the smoke budget into .cache/py313/. PYTHON313: python3.13 where that runs, else pyenv's
# 3.13.0; or name one: make py313 PYTHON313=/usr/bin/python3.13
PYTHON313 ?= $(shell python3.13 -V >/dev/null 2>&1 && echo python3.13 || echo $(HOME)/.pyenv/versions/3.13.0/bin/python)
PY313 := .venv313/bin/python
py313:
	test -x $(PY313) || $(PYTHON313) -m venv .venv313
	$(PY313) -c 'import sys; assert sys.version_info[:2] == (3, 13), sys.version'
	$(PY313) -m pip install --quiet --upgrade pip
	$(PY313) -m pip install --quiet -r requirements.txt
	$(PY313) -m pip install --quiet --no-deps -e .
	COURSE_PROFILE=tiny COURSE_RESULTS_DIR=$(CURDIR)/.cache/py313/test-results \
	COURSE_OUTPUT_DIR=$(CURDIR)/.cache/py313/test-outputs $(PY313) -m pytest -q -p no:cacheprovider tests
	COURSE_PROFILE=tiny COURSE_SMOKE=1 COURSE_RESULTS_DIR=$(CURDIR)/.cache/py313/results \
	COURSE_OUTPUT_DIR=$(CURDIR)/.cache/py313/outputs \
	$(PY313) scripts/run_course.py --out .cache/py313 --summary .cache/py313/summary.json --no-compare notebooks/02_lora.ipynb

# What scripts/gpu_check.sh would run on a GPU (it does this by itself where there is no CUDA).
gpu-check-dry-run: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh --dry-run

clean-venv:
	rm -rf $(VENV)
